"""What a `modelplex serve` process runs for jobs beside its API: the webhook
dispatcher, retention, and (embedded mode) its own worker processes, which it
wakes when it queues a job on a store that cannot wake them itself (SQLite).

Nothing here runs on a short timer when the server is idle: retention runs at
most every 10 minutes, the dispatcher polls every `DISPATCH_POLL_S`, and
workers sleep until they are woken (see `jobs/worker.py`). The one short timer
of an idle process is the repository's poll (`repository_sync.py`), which costs
a stat on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from modelplex.jobs.batches import CREATION_LIMIT_S
from modelplex.jobs.callbacks import Resolver
from modelplex.jobs.supervisor import WorkerSupervisor
from modelplex.jobs.waiting import wait_any
from modelplex.jobs.webhooks import DeliveryPolicy, Dispatcher
from modelplex.retry import Backoff
from modelplex.settings import Settings
from modelplex.storage.blobs import BlobStore
from modelplex.storage.interface import Store

log = logging.getLogger(__name__)

WEBHOOK_RETRY_CAP_S = 3600.0
DISPATCH_POLL_S = 1.0
"""How often the webhook dispatcher looks for due deliveries when it has none."""


class JobSystem:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        *,
        secret: str,
        worker_env: dict[str, str] | None,
        resolver: Resolver | None = None,
    ) -> None:
        """`worker_env`: the environment of the worker processes to supervise (None: none)."""
        self._settings = settings
        self._store = store
        self._blobs = blobs
        backoff = Backoff(base_s=settings.webhook_retry_base_s, cap_s=WEBHOOK_RETRY_CAP_S)
        self._dispatcher = Dispatcher(
            store,
            secret,
            DeliveryPolicy(settings.webhook_max_attempts, backoff),
            timeout_s=settings.webhook_timeout_s,
            allow_private=settings.webhook_allow_private,
            allowed_hosts=settings.webhook_allowed_hosts,
            poll_s=DISPATCH_POLL_S,
            concurrency=settings.webhook_concurrency,
            max_response_bytes=settings.webhook_max_response_bytes,
            resolver=resolver,
        )
        self.supervisor = (
            WorkerSupervisor(settings.workers, worker_env, settings.job_drain_s)
            if worker_env is not None and settings.workers
            else None
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatcher.run(self._stop), name="webhook-dispatcher"),
            asyncio.create_task(self._purge_forever(), name="job-retention"),
        ]
        if self.supervisor is not None:
            self.supervisor.start()
            if not self._store.shared_wakeups:
                self._tasks.append(
                    asyncio.create_task(self._wake_workers(self.supervisor), name="job-wakeups")
                )

    async def _wake_workers(self, supervisor: WorkerSupervisor) -> None:
        """Pass this process's submissions on to its worker processes, at once (a
        burst of submissions while they are being told is one more wake-up)."""
        queued = await self._store.watch()
        while not self._stop.is_set():
            await wait_any(self._stop, queued, seconds=3600)
            if queued.is_set():
                queued.clear()
                supervisor.wake()

    async def stop(self) -> None:
        self._stop.set()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def purge_once(self) -> int:
        """Delete finished jobs past retention and abandoned batches, and their blobs;
        returns how many jobs."""
        cutoff = time.time() - self._settings.job_retention_hours * 3600
        removed = await self._store.purge(cutoff)
        removed += await self._store.purge_abandoned_batches(time.time() - CREATION_LIMIT_S)
        for job in removed:
            for ref in (job.input_ref, job.result_ref, job.upload_ref):
                if ref is not None:
                    await self._blobs.delete(ref)
        return len(removed)

    async def _purge_forever(self) -> None:
        interval = min(600.0, self._settings.job_retention_hours * 3600 / 10)
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
