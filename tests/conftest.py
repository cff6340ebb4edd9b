from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import skimage.data

from modelplex.examples import ensure_example_repository
from modelplex.server import RunningServer, start
from modelplex.settings import Settings, default_cache_dir
from tests.databases import database_url, postgres_url
from tests.helpers import encode_image

__all__ = ["database_url", "postgres_url"]  # fixtures shared by every test package


@pytest.fixture(scope="session")
def example_repo() -> Path:
    """The real example models (built once into the user cache, as `modelplex serve` does)."""
    return ensure_example_repository(default_cache_dir())


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos shipped with scikit-image, encoded as a client would send them."""
    return {
        "cat.jpg": encode_image(skimage.data.chelsea(), "JPEG"),
        "coffee.png": encode_image(skimage.data.coffee(), "PNG"),
        "tripod.webp": encode_image(skimage.data.camera(), "WEBP"),
    }


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    """Test settings: a free port, state in `tmp`, no worker processes and no gRPC
    unless asked. (gRPC tests run the server in its own process: tritonclient's and
    modelplex's generated code both define the protocol's `inference` package, and
    one process can hold only one of them.)"""
    values: dict[str, Any] = {"workers": 0, "grpc_enabled": False, **overrides}
    return Settings(port=0, data_dir=tmp / "data", cache_dir=tmp / "cache", **values)


def wait_ready(client: httpx.Client) -> None:
    """Until the models have loaded: ready, or not ready by the readiness policy
    (a repository without a model that loads)."""
    for _ in range(600):
        response = client.get("/readyz")
        if response.status_code == 200 or response.json()["status"] == "not_ready":
            return
        time.sleep(0.05)
    raise AssertionError("server never became ready")


@pytest.fixture(scope="session")
def example_server(
    example_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    settings = settings_for(tmp_path_factory.mktemp("example-server"))
    with start(settings, example_repo) as server:
        yield server


@pytest.fixture
def client(example_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=example_server.url, timeout=30) as http:
        wait_ready(http)
        yield http
