"""The asynchronous side of a `modelplex serve` process: job and batch services,
the webhook dispatcher, retention, and (embedded mode) the worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from modelplex.core.registry import ModelRegistry
from modelplex.jobs.backend import Backend, database_url
from modelplex.jobs.batches import BatchService
from modelplex.jobs.pipelines import PipelineRegistry
from modelplex.jobs.service import JobService
from modelplex.jobs.supervisor import WorkerSupervisor, worker_environment
from modelplex.jobs.webhooks import DeliveryPolicy, Dispatcher
from modelplex.settings import Settings

log = logging.getLogger(__name__)


class JobSystem:
    def __init__(self, settings: Settings, repository: Path, models: ModelRegistry) -> None:
        self.settings = settings
        self.repository = repository
        self.models = models
        self.pipelines = PipelineRegistry(repository)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.supervisor: WorkerSupervisor | None = None
        self.backend: Backend | None = None

    async def start(self) -> None:
        settings = self.settings
        self.backend = backend = await Backend.open(settings)
        await asyncio.to_thread(self.pipelines.load_all)
        self.jobs = JobService(backend.store, backend.blobs, self.models, self.pipelines, settings)
        self.batches = BatchService(backend.store, self.jobs)
        dispatcher = Dispatcher(
            backend.store,
            backend.secret,
            DeliveryPolicy(settings.webhook_max_attempts, settings.webhook_retry_base_s),
            timeout_s=settings.webhook_timeout_s,
            allow_private=settings.webhook_allow_private,
        )
        self._tasks = [
            asyncio.create_task(dispatcher.run(self._stop), name="webhook-dispatcher"),
            asyncio.create_task(self._purge_forever(), name="job-retention"),
        ]
        if settings.workers:
            env = worker_environment(settings, self.repository, database_url(settings))
            self.supervisor = WorkerSupervisor(settings.workers, env, settings.job_drain_s)
            self.supervisor.start()

    async def stop(self) -> None:
        self._stop.set()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.backend is not None:
            await self.backend.close()

    async def purge_once(self) -> int:
        """Delete finished jobs past retention, and their blobs; returns how many."""
        backend = self.backend
        if backend is None:
            return 0
        cutoff = time.time() - self.settings.job_retention_hours * 3600
        removed = await backend.store.purge(cutoff)
        for job in removed:
            for ref in (job.input_ref, job.result_ref, job.upload_ref):
                if ref is not None:
                    await backend.blobs.delete(ref)
        return len(removed)

    async def _purge_forever(self) -> None:
        interval = min(600.0, self.settings.job_retention_hours * 3600 / 10)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                removed = await self.purge_once()
            except Exception as exc:  # retention must keep running
                log.warning("retention failed: %s", exc, exc_info=exc)
                continue
            if removed:
                log.info("retention: deleted %d finished jobs", removed)
