"""Fixtures of the gRPC adapter's tests: the service over a small repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelplex.oip.service import V2Service
from tests.helpers import write_python_model
from tests.oip.harness import build_repo, open_service


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="package")
def repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_repo(tmp_path_factory.mktemp("grpc") / "repo", example_repo)
    write_python_model(built, "crashes", fail=True)
    return built


@pytest.fixture
async def service(repo: Path, tmp_path: Path) -> AsyncIterator[V2Service]:
    async with open_service(repo, tmp_path) as opened:
        yield opened
