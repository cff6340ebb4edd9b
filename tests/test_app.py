"""The composition root: a serving process and a worker built from settings, sharing
one in-memory store, run a job end to end in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelplex.app import Modelplex, ModelplexWorker
from modelplex.jobs.service import SubmitRequest
from modelplex.records import JobKind, JobStatus
from modelplex.storage.memory import MemoryStore
from tests.conftest import settings_for
from tests.helpers import write_python_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_job_runs_through_the_composed_parts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    settings = settings_for(tmp_path, job_poll_s=0.01, webhook_secret=None)
    store = MemoryStore()
    server = Modelplex(settings, repo, store=store)
    worker = ModelplexWorker(settings, repo, store=store)
    await server.start()
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop), name="worker")
    try:
        for _ in range(500):  # bounded: the models load in the background
            if server.registry.readiness().loaded:
                break
            await asyncio.sleep(0.01)
        body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
        job, created = await server.jobs.submit(SubmitRequest(JobKind.MODEL, "doubler", body))
        assert created
        assert job.version == "1"  # the default version, pinned at submission
        for _ in range(500):
            current = await server.jobs.get(job.id)
            if current.status.finished:
                break
            await asyncio.sleep(0.01)
        assert current.status is JobStatus.COMPLETED, current.error
        assert await server.jobs.result(job.id) == {
            "model": {"name": "doubler", "version": "1"},
            "predictions": [{"y": [2.0, 4.0]}, {"y": [6.0, 8.0]}],
        }
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await server.stop()
    # The store was handed in: closing the parts does not close it.
    assert await store.get(job.id) is not None


async def test_a_worker_loads_only_the_models_its_jobs_use_when_they_need_them(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    write_python_model(repo, "unused")
    settings = settings_for(tmp_path, job_poll_s=0.01, webhook_secret=None)
    store = MemoryStore()
    server = Modelplex(settings, repo, store=store)
    worker = ModelplexWorker(settings, repo, store=store)
    await server.start()
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop), name="worker")
    try:
        for _ in range(500):  # bounded: both sides list the repository
            if server.registry.readiness().loaded and worker.registry.loaded.is_set():
                break
            await asyncio.sleep(0.01)
        # Idle: the worker knows the folders but has loaded none of them.
        assert {m.name: m.versions for m in worker.registry.catalog()} == {
            "doubler": (),
            "unused": (),
        }
        body = {"instance": [1.0, 2.0]}
        job, _ = await server.jobs.submit(SubmitRequest(JobKind.MODEL, "doubler", body))
        for _ in range(500):
            current = await server.jobs.get(job.id)
            if current.status.finished:
                break
            await asyncio.sleep(0.01)
        assert current.status is JobStatus.COMPLETED, current.error
        loaded = {m.name: [v.version for v in m.versions] for m in worker.registry.catalog()}
        assert loaded == {"doubler": ["1"], "unused": []}
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await server.stop()
