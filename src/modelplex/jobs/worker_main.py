"""`modelplex worker`: one worker process against the configured job database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry
from modelplex.jobs.backend import Backend
from modelplex.jobs.pipelines import PipelineRegistry
from modelplex.jobs.retry import RetryPolicy
from modelplex.jobs.runner import JobRunner
from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.process import tune_gc
from modelplex.settings import Settings

log = logging.getLogger(__name__)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        concurrency=settings.worker_concurrency,
        lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s,
        drain_s=settings.job_drain_s,
        blob_threshold_bytes=settings.blob_threshold_bytes,
        retry=RetryPolicy(
            max_attempts=settings.job_max_attempts,
            base_s=settings.job_retry_base_s,
            cap_s=settings.job_retry_cap_s,
        ),
    )


async def run_worker(settings: Settings, repository: Path, stop: asyncio.Event) -> None:
    backend = await Backend.open(settings)
    registry = ModelRegistry(repository, settings)
    dataplane = DataPlane(registry, settings)
    try:
        pipelines = PipelineRegistry(repository)
        await asyncio.to_thread(registry.load_all)
        await asyncio.to_thread(pipelines.load_all)
        tune_gc(settings.gc_gen0_threshold)
        runner = JobRunner(dataplane, pipelines, backend.blobs)
        worker = Worker(backend.store, runner, backend.blobs, worker_config(settings))
        await worker.run(stop)
    finally:
        await registry.close()
        dataplane.close()
        await backend.close()


def main(settings: Settings, repository: Path) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, repository, stop)

    asyncio.run(run())
