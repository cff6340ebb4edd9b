"""The worker: claims jobs, runs them, heartbeats their leases, persists outcomes.

Built from a few asyncio primitives: a capacity bound (`concurrency` jobs at a
time), a stop event for a graceful drain, and a shielded final write so that
cancelling a job's task never loses its outcome. Outcomes go through the
store's guarded transition with the job's lease: if the lease was lost (the job
was re-claimed after this worker stalled), the write matches no row and the
result is discarded, so a job's visible result is written exactly once.

An idle worker sleeps until something may be claimable: the store's wake-up
(a submission, a retry, a job handed back), `wake()` (the serving process's
signal to its own workers), the earliest due time the store reports (a retry's
backoff, a lease that will expire), or at the latest `poll_s`, the fallback.
A job whose workers keep dying is claimed again up to `max_crashes` times;
those claims do not spend its `max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from modelplex.errors import (
    InternalError,
    ResultNotSerializable,
    RunnerFailed,
    StoreUnavailable,
    WorkerCrashed,
    WorkerLost,
)
from modelplex.ids import new_id
from modelplex.jobs.control import Cancelled, Completed, Failed, JobControl, Outcome
from modelplex.jobs.events import finish_event
from modelplex.jobs.runner import JobRunner
from modelplex.jobs.waiting import wait_any
from modelplex.records import (
    CANCELLED_BY_REQUEST,
    Clock,
    Job,
    JobChanges,
    JobError,
    JobKind,
    JobStatus,
    NewDelivery,
)
from modelplex.retry import Backoff, RetryPolicy
from modelplex.storage.blobs import BlobStore
from modelplex.storage.interface import JobStore

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.2
"""How often a busy worker asks the store which of its jobs were cancelled: a
cancel reaches a running job's next check within this, not within a heartbeat."""
PROGRESS_EVERY_S = 0.5
WRITE_ATTEMPTS = 5
STORE_BACKOFF = Backoff(base_s=0.5, cap_s=5.0)
"""How a worker waits for a job database that went away (writes and claims)."""


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 4
    lease_s: float = 10.0
    poll_s: float = 2.0
    max_crashes: int = 5
    drain_s: float = 30.0
    blob_threshold_bytes: int = 64 * 1024
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(3, Backoff(base_s=2.0, cap_s=300.0, jitter=0.5))
    )


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"


class Worker:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        blobs: BlobStore,
        config: WorkerConfig,
        *,
        name: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.id = name or worker_id()
        self._clock = clock
        self._store = store
        self._runner = runner
        self._blobs = blobs
        self._config = config
        self._running: dict[str, tuple[asyncio.Task[None], JobControl]] = {}
        self._slot_free = asyncio.Event()
        self._woken: asyncio.Event | None = None
        self._busy = asyncio.Event()
        """Set while a job runs: an idle worker's heartbeat loop sleeps on it."""

    def wake(self) -> None:
        """Look for jobs now (called when another process says it queued some)."""
        if self._woken is not None:
            self._woken.set()

    async def _idle(self, stop: asyncio.Event, woken: asyncio.Event) -> None:
        """Sleep until a wake-up, the next due time, or the fallback poll."""
        seconds = self._config.poll_s
        try:
            due = await self._store.next_due_in()
        except StoreUnavailable:
            due = None
        if due is not None:
            seconds = min(seconds, max(due, 0.01))
        await wait_any(stop, woken, seconds=seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set, then drain."""
        woken = self._woken = await self._store.watch()
        heartbeat = asyncio.create_task(self._heartbeats(stop), name=f"heartbeat:{self.id}")
        log.info("worker %s started (concurrency %d)", self.id, self._config.concurrency)
        failures = 0
        try:
            while not stop.is_set():
                # A step thread that would not stop still holds its slot (see steps.py).
                capacity = self._config.concurrency - len(self._running) - self._runner.abandoned
                if capacity <= 0:
                    self._slot_free.clear()
                    await wait_any(stop, self._slot_free, seconds=self._config.poll_s)
                    continue
                woken.clear()  # a wake-up from here on is for a later claim
                try:
                    jobs = await self._store.claim(self.id, capacity, self._config.lease_s)
                    failures = 0
                except Exception as exc:  # keep claiming; the log says why we could not
                    failures += 1
                    log.warning("worker %s cannot claim: %s", self.id, exc)
                    await wait_any(stop, seconds=STORE_BACKOFF.delay(failures))
                    continue
                if not jobs:
                    await self._idle(stop, woken)
                    continue
                for job in jobs:
                    self._start(job)
        finally:
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            log.info("worker %s stopped", self.id)

    def _start(self, job: Job) -> None:
        control = JobControl(job)
        task = asyncio.create_task(self._run_job(job, control), name=f"job:{job.id}")
        self._running[job.id] = (task, control)
        self._busy.set()

        def done(finished: asyncio.Task[None]) -> None:
            # A re-claim of the same job by this worker may have replaced the entry.
            if self._running.get(job.id, (None,))[0] is finished:
                del self._running[job.id]
            self._slot_free.set()
            if not finished.cancelled() and finished.exception() is not None:
                log.error("job %s task failed", job.id, exc_info=finished.exception())

        task.add_done_callback(done)

    async def _run_job(self, job: Job, control: JobControl) -> None:
        if job.cancel_requested:  # cancelled while queued or while its worker was lost
            outcome: Outcome = Cancelled()
        elif job.crashes >= self._config.max_crashes:  # it kills every worker that runs it
            crashed = WorkerCrashed(f"the job's worker was lost {job.crashes} times")
            outcome = Failed(JobError.of(crashed))
        else:
            started = time.monotonic()
            try:
                outcome = await self._runner.run(job, control)
            except asyncio.CancelledError:
                # Shutdown ran out of drain time: hand the job back, untouched.
                await asyncio.shield(self._release(job))
                raise
            except Exception as exc:  # a bug in the runner must not kill the worker
                log.error("job %s crashed the runner", job.id, exc_info=exc)
                outcome = Failed(JobError.of(RunnerFailed()))
            log.debug("job %s ran in %.3fs", job.id, time.monotonic() - started)
        if control.lost and isinstance(outcome, Cancelled) and not job.cancel_requested:
            # Stopped because the lease was lost: not a cancel to record. The job's
            # next claim (another worker's, or this one's) runs it again.
            log.warning("job %s: lease lost before it finished; result discarded", job.id)
            return
        await asyncio.shield(self._finish(job, control, outcome))

    async def _finish(self, job: Job, control: JobControl, outcome: Outcome) -> None:
        """Persist the outcome; whatever goes wrong here, the job never stays stuck."""
        try:
            await self._persist(job, control, outcome)
        except Exception as exc:
            log.error("job %s: writing its outcome failed", job.id, exc_info=exc)
            unstorable = JobError.of(InternalError("the job's outcome could not be stored"))
            if not isinstance(outcome, Failed) or outcome.error != unstorable:
                await self._persist(job, control, Failed(unstorable))

    async def _persist(self, job: Job, control: JobControl, outcome: Outcome) -> None:
        now = self._clock()
        entry: dict[str, Any] = {
            "attempt": job.attempts,
            "worker": self.id,
            "started_at": job.updated_at,
            "finished_at": now,
        }
        history = list(job.history)
        if job.previous_owner and job.attempts > 1:
            lost = JobError.of(WorkerLost("worker lost; job re-claimed")).as_dict()
            history.append(
                {"attempt": job.attempts - 1, "worker": job.previous_owner, "error": lost}
            )
        async with control.writing:  # a flush in progress lands first, with its events
            control.finishing = True
        values: JobChanges = {"steps": control.steps, "progress": control.progress}
        events = list(control.events)
        lines = outcome.lines
        if isinstance(outcome, Completed):
            try:
                result = await self._result_fields(outcome.result)
            except (TypeError, ValueError) as exc:  # orjson cannot encode what a step returned
                log.error("job %s: result is not JSON", job.id, exc_info=exc)
                outcome = Failed(JobError.of(ResultNotSerializable()))
            else:
                target = JobStatus.COMPLETED
                values.update(result)
                values["progress"], values["error"] = 1.0, None
        if isinstance(outcome, Cancelled):
            target = JobStatus.CANCELLED
            values["error"] = entry["error"] = CANCELLED_BY_REQUEST
            if outcome.result is not None:  # a chunk's lines that ran before the cancel
                values.update(await self._result_fields(outcome.result))
        elif isinstance(outcome, Failed):
            entry["error"] = values["error"] = outcome.error.as_dict()
            policy = replace(self._config.retry, max_attempts=job.max_attempts)
            decision = policy.decide(job.own_attempts, outcome.error.retryable)
            target = JobStatus.QUEUED if decision.retry else JobStatus.FAILED
            values["run_after_s"] = decision.delay_s
            if target is JobStatus.FAILED and job.kind is JobKind.BATCH_CHUNK:
                lines = (0, len((job.input or {}).get("items", [])))
        values["history"] = [*history, entry]
        written = await self._write(job, target, values, events, lines)
        if written is None and target is not JobStatus.CANCELLED:
            written = await self._cancel_instead(job, values, events, lines)
        if written is None:
            log.warning("job %s: lease lost before it finished; result discarded", job.id)

    async def _cancel_instead(
        self, job: Job, values: JobChanges, events: list[NewDelivery],
        lines: tuple[int, int] | None,
    ) -> Job | None:  # fmt: skip
        """A cancel accepted while the job ran wins over its outcome (a result, a
        failure, a retry): the cancel's answer said it would end CANCELLED. Only a
        chunk keeps what it ran, as lines of its batch."""
        current = await self._store.get(job.id)
        if current is None or not current.cancel_requested:
            return None  # not a cancel: the lease was lost
        ref = values.get("result_ref")
        if job.kind is not JobKind.BATCH_CHUNK or values.get("error") is not None:
            values["result"], values["result_ref"], lines = None, None, None
            if ref is not None:
                with contextlib.suppress(Exception):  # an orphan blob is harmless
                    await self._blobs.delete(ref)
        values["error"] = values["history"][-1]["error"] = CANCELLED_BY_REQUEST
        values.pop("run_after_s", None)
        return await self._write(job, JobStatus.CANCELLED, values, events, lines)

    async def _write(
        self, job: Job, target: JobStatus, values: JobChanges,
        events: list[NewDelivery], lines: tuple[int, int] | None,
    ) -> Job | None:  # fmt: skip
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return await self._store.transition(
                    job.id,
                    target,
                    lease=job.lease,
                    changes=values,
                    deliveries_out=events + finish_event(job, target, self._clock(), **values),
                    batch_delta=(lines or (0, 0)) if target.finished else None,
                    # Once a cancel is accepted, nothing but CANCELLED ends the job.
                    unless_cancelled=target is not JobStatus.CANCELLED,
                )
            except StoreUnavailable as exc:
                log.warning("job %s: cannot write outcome (%s); retrying", job.id, exc)
                await asyncio.sleep(STORE_BACKOFF.delay(attempt))
        log.error("job %s: outcome lost; the lease will expire and it runs again", job.id)
        return None

    async def _result_fields(self, result: Any) -> JobChanges:
        encoded = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(encoded) > self._config.blob_threshold_bytes:
            return {"result": None, "result_ref": await self._blobs.put(encoded)}
        return {"result": orjson.loads(encoded), "result_ref": None}

    async def _release(self, job: Job) -> None:
        """Give a job back to the queue without counting the attempt."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.release(job.id, job.lease)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """Renew leases every lease/3 seconds, read cancel requests every
        `CANCEL_POLL_S`, flush progress every `PROGRESS_EVERY_S`. Never dies of an
        error: a dead heartbeat would let every lease expire and every job run twice."""
        interval = self._config.lease_s / 3
        last_renew = last_flush = 0.0
        while True:
            if not self._running:  # nothing to renew or flush: no timer while idle
                self._busy.clear()
                await self._busy.wait()
            await asyncio.sleep(min(CANCEL_POLL_S, interval))
            try:
                if time.monotonic() - last_renew >= interval and self._running:
                    last_renew = time.monotonic()
                    await self._renew()  # it reads cancel requests too
                else:
                    await self._poll_cancels()
                if time.monotonic() - last_flush >= PROGRESS_EVERY_S:
                    last_flush = time.monotonic()
                    await self._flush_progress()
            except Exception as exc:
                log.error("worker %s heartbeat failed", self.id, exc_info=exc)

    async def _poll_cancels(self) -> None:
        """Tell running jobs whose cancel was requested: a read of their rows."""
        waiting = {i: c for i, (_t, c) in self._running.items() if not c.cancel.is_set()}
        if not waiting:
            return
        try:
            cancelled = await self._store.cancels_requested(list(waiting))
        except StoreUnavailable:
            return  # the next poll, or the heartbeat, asks again
        for job_id in cancelled:
            waiting[job_id].cancel.set()

    async def _renew(self) -> None:
        sent = dict(self._running)
        try:
            attempts = {job_id: control.job.attempts for job_id, (_t, control) in sent.items()}
            held = await self._store.heartbeat(self.id, attempts, self._config.lease_s)
        except StoreUnavailable as exc:
            log.warning("worker %s heartbeat failed: %s", self.id, exc)
            return
        for job_id, (_task, control) in sent.items():
            if job_id not in held:  # re-claimed elsewhere: stop; its result would be discarded
                control.lost = True
                control.cancel.set()
            elif held[job_id]:
                control.cancel.set()

    async def _flush_progress(self) -> None:
        for job_id, (_task, control) in list(self._running.items()):
            async with control.writing:
                if not control.dirty or control.lost or control.finishing:
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
