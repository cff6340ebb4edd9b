"""A load or unload call on one serving process reaches every other one: two
`modelplex serve` processes and a separate `modelplex worker` on PostgreSQL, and
`serve` with its own worker processes on SQLite, over real sockets."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelplex.server import start
from tests.conftest import wait_ready
from tests.databases import fresh_database
from tests.helpers import copy_model
from tests.jobs.conftest import job_settings
from tests.jobs.harness import ServerProcess, WorkerProcess, wait_for, wait_job

CONVERGED_S = 5.0
"""Every process follows a load or unload call within this long (the requirement)."""
PIXELS = {"instance": [0.0] * 64}


def _version_of(client: httpx.Client) -> str | None:
    answer = client.post("/v1/models/digits/predict", json=PIXELS)
    return answer.json()["model"]["version"] if answer.status_code == 200 else None


def _submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={"model": "digits", "input": PIXELS, **body})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


@pytest.fixture
def repo(example_repo: Path, tmp_path: Path) -> Path:
    """digits with versions 1 and 2, its default the highest (a new folder takes over)."""
    repository = tmp_path / "repo"
    folder = copy_model(example_repo, "digits", repository)
    toml = folder / "model.toml"
    toml.write_text(re.sub(r"(?m)^default_version = .*$", "", toml.read_text()))
    return repository


@contextlib.contextmanager
def _clients(*urls: str) -> Iterator[list[httpx.Client]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(httpx.Client(base_url=u, timeout=30)) for u in urls]


def test_a_load_on_one_server_reaches_the_other_and_the_workers(
    request: pytest.FixtureRequest, repo: Path, tmp_path: Path
) -> None:
    url = fresh_database(request, "postgresql", tmp_path)
    settings = job_settings(tmp_path, url)
    with contextlib.ExitStack() as stack:
        # Two API replicas and a worker, each a process of its own.
        first = ServerProcess(settings, repo, tmp_path / "serve-1.log")
        stack.callback(first.terminate)
        second = ServerProcess(settings, repo, tmp_path / "serve-2.log")
        stack.callback(second.terminate)
        worker = WorkerProcess(settings, repo, url)
        stack.callback(worker.terminate)
        one, other = stack.enter_context(_clients(first.url, second.url))
        # The worker holds version 2 (the default) before the new version comes.
        before = wait_job(other, _submit(other)["id"])
        assert before["status"] == "COMPLETED", before
        assert before["result"]["model"]["version"] == "2"

        shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
        assert one.post("/v2/repository/models/digits/load").status_code == 200
        assert _version_of(one) == "3"
        wait_for(lambda: _version_of(other) == "3", timeout=CONVERGED_S)
        named = _submit(other, version="3")
        default = _submit(other)
        assert default["version"] == "3"  # pinned at submission
        for job in (named, default):
            done = wait_job(other, job["id"])
            assert done["status"] == "COMPLETED", done
            assert done["result"]["model"] == {"name": "digits", "version": "3"}

        assert one.post("/v2/repository/models/digits/unload").status_code == 200
        wait_for(
            lambda: other.get("/v2/models/digits/ready").status_code == 400,
            timeout=CONVERGED_S,
        )
        refused = other.post("/v1/jobs", json={"model": "digits", "input": PIXELS})
        assert refused.json()["code"] == "MODEL_NOT_READY", refused.text


def test_a_job_naming_a_version_that_is_nowhere_is_refused_at_submission(
    request: pytest.FixtureRequest, repo: Path, tmp_path: Path
) -> None:
    url = fresh_database(request, "postgresql", tmp_path)
    with (
        start(job_settings(tmp_path, url), repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        answer = client.post("/v1/jobs", json={"model": "digits", "version": "7", "input": PIXELS})
        assert answer.status_code == 404
        assert answer.json()["code"] == "VERSION_NOT_FOUND"


def test_serves_own_workers_follow_a_load_on_sqlite(repo: Path, tmp_path: Path) -> None:
    """The embedded deployment: one `serve` and its worker processes on SQLite."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    with (
        start(job_settings(tmp_path, url, workers=1), repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        before = wait_job(client, _submit(client)["id"])
        assert before["result"]["model"]["version"] == "2", before
        shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
        assert client.post("/v2/repository/models/digits/load").status_code == 200
        for job in (_submit(client, version="3"), _submit(client)):
            done = wait_job(client, job["id"])
            assert done["status"] == "COMPLETED", done
            assert done["result"]["model"] == {"name": "digits", "version": "3"}
