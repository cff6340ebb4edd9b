"""Job tests run against SQLite and PostgreSQL: the same tests, both databases
(see tests/databases.py)."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelplex.server import RunningServer, start
from modelplex.settings import Settings
from tests.conftest import settings_for, wait_ready
from tests.databases import fresh_database
from tests.helpers import copy_model, write_python_model
from tests.jobs.harness import TEST_SECRET, WorkerProcess
from tests.jobs.units import Parts, open_parts

STEPS_PY = '''
import time
from pathlib import Path

from modelplex.jobs.pipelines import StepError


def slow(ctx, data):
    """Sleeps in small slices, reporting progress and honouring cancellation."""
    slices = int(data.get("slices", 10))
    for i in range(slices):
        ctx.check_cancelled()
        time.sleep(float(data.get("slice_s", 0.05)))
        ctx.progress((i + 1) / slices)
    return {**data, "slept": slices}


def finish(ctx, data):
    return {"done": True, "slept": data["slept"], "echo": data.get("echo")}


def flaky(ctx, data):
    """Fails until a marker file has been touched `failures` times."""
    marker = Path(data["marker"])
    count = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(count + 1))
    if count < int(data.get("failures", 1)):
        raise RuntimeError("transient failure")
    return {"attempts_seen": count + 1}


def refuse(ctx, data):
    raise StepError("INPUT_DECODE_FAILED", "'photo.jpg' is not an image")


def to_pixels(ctx, data):
    import numpy as np
    return {"x": np.asarray(data["rows"], dtype=np.float32)}


def render(ctx, data):
    return {"y": data["doubled"]["y"].tolist()}


def not_json(ctx, data):
    return {"a set": {1, 2}}
'''

PIPELINES = {
    "slow-steps": """
        [[steps]]
        name = "slow"
        function = "slow"
        [[steps]]
        name = "finish"
        function = "finish"
    """,
    "flaky": """
        [[steps]]
        name = "flaky"
        function = "flaky"
        retry = { max_attempts = 3, backoff_s = 0.01 }
    """,
    "flaky-once": """
        max_attempts = 3
        [[steps]]
        name = "flaky"
        function = "flaky"
    """,
    "flaky-five": """
        max_attempts = 5
        [[steps]]
        name = "flaky"
        function = "flaky"
    """,
    "not-json": """
        [[steps]]
        name = "oops"
        function = "not_json"
    """,
    "refuses": """
        [[steps]]
        name = "refuse"
        function = "refuse"
    """,
    "model-step": """
        [[steps]]
        name = "prepare"
        function = "to_pixels"
        [[steps]]
        name = "double"
        model = "doubler"
        output = "doubled"
        batch_size = 2
        [[steps]]
        name = "render"
        function = "render"
    """,
}


def build_jobs_repo(repo: Path, example_repo: Path) -> None:
    for model in ("digits", "image-classifier", "efficientnet-lite0", "album-tagging"):
        copy_model(example_repo, model, repo)
    # album-tagging with the option that fails a job on one undecodable image
    strict = copy_model(example_repo, "album-tagging", repo / "_strict")
    strict.rename(repo / "album-strict")
    (repo / "_strict").rmdir()
    toml = repo / "album-strict" / "pipeline.toml"
    toml.write_text(toml.read_text().replace('image = "report"', 'image = "fail"'))
    write_python_model(repo, "doubler", batching="[batching]\nmax_batch_size = 8\n")
    write_python_model(repo, "sleepy", delay_ms=4000, timeout_ms=60_000)
    for name, toml in PIPELINES.items():
        folder = repo / name
        folder.mkdir()
        (folder / "pipeline.toml").write_text(textwrap.dedent(toml))
        (folder / "steps.py").write_text(STEPS_PY)


@pytest.fixture(scope="session")
def jobs_repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("jobs-repo")
    build_jobs_repo(repo, example_repo)
    return repo


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    """A worker's parts over a fresh store (see `tests.jobs.units`)."""
    async with open_parts(tmp_path) as opened:
        yield opened


@dataclass
class JobsEnv:
    settings: Settings
    repository: Path
    database_url: str
    server: RunningServer
    client: httpx.Client
    workers: list[WorkerProcess]

    def spawn_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.settings, self.repository, self.database_url)
        self.workers.append(worker)
        return worker


def job_settings(tmp: Path, database_url: str, **overrides: Any) -> Settings:
    """Fast, test-sized timing: leases, polls, retries and webhook backoff in tenths of seconds."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "webhook_allow_private": True,
        "webhook_secret": TEST_SECRET,
        "job_lease_s": 2.0,
        "job_poll_s": 0.05,
        "job_retry_base_s": 0.05,
        "job_retry_cap_s": 0.2,
        "webhook_retry_base_s": 0.05,
        "webhook_max_attempts": 3,
        "webhook_timeout_s": 2.0,
        "worker_concurrency": 2,
        "blob_threshold_bytes": 8192,
        "batch_chunk_size": 3,
        "job_drain_s": 10.0,
        **overrides,
    }
    return settings_for(tmp, **values)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def jobs_env(
    request: pytest.FixtureRequest, jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobsEnv]:
    """A server (API, dispatcher) and one `modelplex worker` process on each database."""
    tmp = tmp_path_factory.mktemp(f"jobs-{request.param}")
    url = fresh_database(request, request.param, tmp)
    with serving_with_a_worker(job_settings(tmp, url), jobs_repo, url) as env:
        yield env


@contextlib.contextmanager
def serving_with_a_worker(
    settings: Settings, repository: Path, url: str, timeout_s: float = 30
) -> Iterator[JobsEnv]:
    """A server and one `modelplex worker` process, each ended when done."""
    with (
        start(settings, repository) as server,
        httpx.Client(base_url=server.url, timeout=timeout_s) as client,
    ):
        env = JobsEnv(settings, repository, url, server, client, [])
        env.spawn_worker()
        try:
            wait_ready(client)
            yield env
        finally:
            for worker in env.workers:
                worker.terminate()
