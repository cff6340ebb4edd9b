"""The worker: claims jobs, runs them, heartbeats their leases, persists outcomes.

Built from a few asyncio primitives: a capacity bound (`concurrency` jobs at a
time), a stop event for a graceful drain, and a shielded final write so that
cancelling a job's task never loses its outcome. Outcomes go through the
store's guarded transition with the job's lease: if the lease was lost (the job
was re-claimed after this worker stalled), the write matches no row and the
result is discarded, so a job's visible result is written exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelplex.errors import StoreUnavailable
from modelplex.jobs.ids import new_id
from modelplex.jobs.models import Job, JobError, JobKind, JobStatus, NewDelivery
from modelplex.jobs.retry import RetryPolicy
from modelplex.jobs.runner import Cancelled, Completed, Failed, JobControl, JobRunner, Outcome
from modelplex.jobs.webhooks import event_payload
from modelplex.storage.blobs import BlobStore
from modelplex.storage.jobstore import SqlJobStore

log = logging.getLogger(__name__)

FINISH_EVENTS = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 4
    lease_s: float = 10.0
    poll_s: float = 0.5
    drain_s: float = 30.0
    blob_threshold_bytes: int = 64 * 1024
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"


class Worker:
    def __init__(
        self,
        store: SqlJobStore,
        runner: JobRunner,
        blobs: BlobStore,
        config: WorkerConfig,
        *,
        name: str | None = None,
        view: Callable[[Job], dict[str, Any]] | None = None,
    ) -> None:
        self.id = name or worker_id()
        self._store = store
        self._runner = runner
        self._blobs = blobs
        self._config = config
        self._view = view or (lambda job: {"id": job.id, "status": job.status.value})
        self._running: dict[str, tuple[asyncio.Task[None], JobControl]] = {}
        self._slot_free = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set, then drain."""
        heartbeat = asyncio.create_task(self._heartbeats(stop), name=f"heartbeat:{self.id}")
        log.info("worker %s started (concurrency %d)", self.id, self._config.concurrency)
        try:
            while not stop.is_set():
                capacity = self._config.concurrency - len(self._running)
                if capacity <= 0:
                    await self._wait(stop, self._slot_free, self._config.poll_s)
                    continue
                try:
                    jobs = await self._store.claim(self.id, capacity, self._config.lease_s)
                except StoreUnavailable as exc:
                    log.warning("worker %s cannot claim: %s", self.id, exc)
                    jobs = []
                if not jobs:
                    await self._wait(stop, None, self._config.poll_s)
                    continue
                for job in jobs:
                    self._start(job)
        finally:
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            log.info("worker %s stopped", self.id)

    @staticmethod
    async def _wait(stop: asyncio.Event, other: asyncio.Event | None, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if other is not None:
            other.clear()
            waiters.append(asyncio.ensure_future(other.wait()))
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _start(self, job: Job) -> None:
        control = JobControl(job)
        task = asyncio.create_task(self._run_job(job, control), name=f"job:{job.id}")
        self._running[job.id] = (task, control)

        def done(_task: asyncio.Task[None]) -> None:
            self._running.pop(job.id, None)
            self._slot_free.set()

        task.add_done_callback(done)

    async def _run_job(self, job: Job, control: JobControl) -> None:
        if job.attempts > job.max_attempts:  # its earlier workers all died holding it
            outcome: Outcome = Failed(
                JobError(
                    "LEASE_EXPIRED",
                    f"the job's worker was lost {job.attempts - 1} times",
                    retryable=False,
                )
            )
        else:
            started = time.time()
            try:
                outcome = await self._runner.run(job, control)
            except asyncio.CancelledError:
                # Shutdown ran out of drain time: hand the job back, untouched.
                await asyncio.shield(self._release(job))
                raise
            except Exception as exc:  # a bug in the runner must not kill the worker
                log.error("job %s crashed the runner", job.id, exc_info=exc)
                outcome = Failed(JobError("INTERNAL", "the job runner failed", retryable=True))
            log.debug("job %s ran in %.3fs", job.id, time.time() - started)
        await asyncio.shield(self._finish(job, control, outcome))

    async def _finish(self, job: Job, control: JobControl, outcome: Outcome) -> None:
        now = time.time()
        entry: dict[str, Any] = {
            "attempt": job.attempts,
            "worker": self.id,
            "started_at": job.updated_at,
            "finished_at": now,
        }
        history = list(job.history)
        if job.previous_owner and job.attempts > 1:
            history.append(
                {"attempt": job.attempts - 1, "worker": job.previous_owner,
                 "error": {"code": "LEASE_EXPIRED", "message": "worker lost; job re-claimed"}}
            )  # fmt: skip
        values: dict[str, Any] = {"steps": control.steps, "progress": control.progress}
        events = list(control.events)
        lines = outcome.lines
        if isinstance(outcome, Completed):
            target = JobStatus.COMPLETED
            values["progress"] = 1.0
            values.update(await self._result_fields(outcome.result))
            values["error"] = None
        elif isinstance(outcome, Cancelled):
            target = JobStatus.CANCELLED
            values["error"] = {"code": "CANCELLED", "message": "cancelled by request"}
            entry["error"] = values["error"]
        else:
            entry["error"] = outcome.error.as_dict()
            values["error"] = outcome.error.as_dict()
            decision = self._config.retry.decide(job.attempts, outcome.error.retryable)
            if decision.retry and job.attempts < job.max_attempts:
                target = JobStatus.QUEUED
                values["run_at"] = now + decision.delay_s
            else:
                target = JobStatus.FAILED
                if job.kind is JobKind.BATCH_CHUNK:
                    lines = (0, len((job.input or {}).get("items", [])))
        values["history"] = [*history, entry]
        for attempt in range(5):
            try:
                written = await self._store.transition(
                    job.id,
                    target,
                    lease=job.lease,
                    values=values,
                    deliveries_out=events + self._finish_events(job, target, values),
                    batch_delta=(lines or (0, 0)) if target.finished else None,
                )
                break
            except StoreUnavailable as exc:
                log.warning("job %s: cannot write outcome (%s); retrying", job.id, exc)
                await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
        else:
            log.error("job %s: outcome lost; the lease will expire and it runs again", job.id)
            return
        if written is None:
            log.warning("job %s: lease lost before it finished; result discarded", job.id)

    def _finish_events(
        self, job: Job, target: JobStatus, values: dict[str, Any]
    ) -> list[NewDelivery]:
        event = FINISH_EVENTS.get(target)
        if event is None or not job.callback_url:
            return []
        data = {
            "id": job.id,
            "status": target.value,
            "kind": job.kind.value,
            "target": job.target,
            "error": values.get("error"),
            "result": values.get("result"),
            "result_ref": values.get("result_ref") is not None,
            "metadata": job.metadata,
        }
        return [NewDelivery(event, job.callback_url, event_payload(event, data))]

    async def _result_fields(self, result: Any) -> dict[str, Any]:
        encoded = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(encoded) > self._config.blob_threshold_bytes:
            return {"result": None, "result_ref": await self._blobs.put(encoded)}
        return {"result": orjson.loads(encoded), "result_ref": None}

    async def _release(self, job: Job) -> None:
        """Give a job back to the queue without counting the attempt."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.transition(
                job.id,
                JobStatus.QUEUED,
                lease=job.lease,
                values={"attempts": job.attempts - 1, "run_at": time.time()},
            )

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """Renew leases, read cancel requests, flush progress: every lease/3 seconds
        (progress more often, when there is any)."""
        interval = self._config.lease_s / 3
        last_renew = 0.0
        while True:
            await asyncio.sleep(min(0.5, interval))
            if time.monotonic() - last_renew >= interval and self._running:
                last_renew = time.monotonic()
                await self._renew()
            await self._flush_progress()

    async def _renew(self) -> None:
        try:
            held = await self._store.heartbeat(self.id, list(self._running), self._config.lease_s)
        except StoreUnavailable as exc:
            log.warning("worker %s heartbeat failed: %s", self.id, exc)
            return
        for job_id, (_task, control) in list(self._running.items()):
            if job_id not in held:
                control.lost = True
                control.cancel.set()
            elif held[job_id]:
                control.cancel.set()

    async def _flush_progress(self) -> None:
        for job_id, (_task, control) in list(self._running.items()):
            if not control.dirty or control.lost:
                continue
            control.dirty = False
            events, control.events = control.events, []
            try:
                ok = await self._store.update_progress(
                    control.job.lease, job_id, control.steps, control.progress, events
                )
            except StoreUnavailable:
                control.events = events + control.events
                control.dirty = True
                continue
            if not ok:
                control.lost = True
                control.cancel.set()

    async def _drain(self) -> None:
        if not self._running:
            return
        log.info("worker %s draining %d jobs", self.id, len(self._running))
        tasks = [task for task, _ in self._running.values()]
        _, pending = await asyncio.wait(tasks, timeout=self._config.drain_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
