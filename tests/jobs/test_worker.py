"""The worker in-process over a MemoryStore on a FakeClock: claims, outcomes, retries,
cancellation through the heartbeat, lease loss, and the graceful stop.

Polls and heartbeats run on short real intervals; leases and retry delays are
moved with the FakeClock. Every wait is for a condition in the store, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest

from modelplex.jobs.batches import BatchService
from modelplex.jobs.events import iso
from modelplex.jobs.service import SubmitRequest
from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.records import (
    Batch,
    BatchStatus,
    DeliveryStatus,
    Job,
    JobKind,
    JobStatus,
    NewBatch,
    NewJob,
)
from modelplex.retry import Backoff, RetryPolicy
from tests.jobs.units import CountingStore, Parts, eventually, job_reaches, wait_task

pytestmark = pytest.mark.anyio

RETRY_S = 30.0
CONFIG = WorkerConfig(
    concurrency=2,
    lease_s=1.0,  # heartbeats every 1/3 s of real time
    poll_s=0.01,
    drain_s=5.0,
    retry=RetryPolicy(5, Backoff(base_s=RETRY_S, cap_s=RETRY_S)),
)
HOOK = "http://127.0.0.1:9/hook"


@dataclass
class Running:
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def stopped(self) -> None:
        self.stop.set()
        await wait_task(self.task)


@contextlib.asynccontextmanager
async def running(
    parts: Parts, config: WorkerConfig = CONFIG, name: str = "w-a"
) -> AsyncIterator[Running]:
    worker = parts.worker(config, name)
    stop = asyncio.Event()
    handle = Running(worker, stop, asyncio.create_task(worker.run(stop), name=name))
    try:
        yield handle
    finally:
        await handle.stopped()


def store_of(parts: Parts) -> CountingStore:
    assert isinstance(parts.store, CountingStore)
    return parts.store


async def polls(parts: Parts, count: int = 5) -> None:
    """Wait until the worker has asked the store for work `count` more times."""
    store = store_of(parts)
    seen = store.claims
    await eventually(lambda: store.claims >= seen + count)


async def step_running(parts: Parts, job_id: str) -> Job:
    """The job's first step is running, as the worker's progress flush wrote it."""

    async def check() -> Job | None:
        job = await parts.get(job_id)
        return job if job.steps[0]["status"] == "RUNNING" else None

    found: Job = await eventually(check)
    return found


def runs(marker: Path) -> int:
    return int(marker.read_text()) if marker.exists() else 0


async def test_a_queued_job_is_claimed_run_and_completed(parts: Parts) -> None:
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    request = SubmitRequest(JobKind.MODEL, "doubler", body, callback_url=HOOK, metadata={"n": 7})
    job, _ = await parts.service().submit(request)
    async with running(parts):
        done = await job_reaches(parts.store, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.COMPLETED, done.error
    expected = {
        "model": {"name": "doubler", "version": "1"},
        "predictions": [{"y": [2.0, 4.0]}, {"y": [6.0, 8.0]}],
    }
    assert done.result == expected
    assert (done.result_ref, done.error, done.lease_owner) == (None, None, None)
    assert (done.attempts, done.progress, done.finished_at) == (1, 1.0, parts.clock())
    assert done.steps[0]["status"] == "COMPLETED"
    assert done.history == [
        {"attempt": 1, "worker": "w-a", "started_at": parts.clock(), "finished_at": parts.clock()}
    ]
    deliveries = await parts.store.list_deliveries(job.id)
    assert [(d.event, d.url, d.status) for d in deliveries] == [
        ("job.completed", HOOK, DeliveryStatus.PENDING)
    ]
    data = deliveries[0].payload["data"]
    assert deliveries[0].payload["type"] == "job.completed"
    assert data["id"] == job.id
    assert (data["status"], data["model"], data["version"]) == ("COMPLETED", "doubler", "1")
    assert (data["result"], data["error"], data["metadata"]) == (expected, None, {"n": 7})
    assert data["finished_at"] == iso(parts.clock())  # the job's own end, as GET shows it


async def test_a_large_result_is_stored_as_a_blob(parts: Parts) -> None:
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"pad": "x" * 200})
    async with running(parts, replace(CONFIG, blob_threshold_bytes=100)):
        done = await job_reaches(parts.store, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.result is None
    assert done.result_ref is not None
    stored = orjson.loads(await parts.blobs.get(done.result_ref))
    assert stored == {"pad": "x" * 200, "trail": ["one", "two"]}


async def test_a_retryable_failure_is_queued_again_after_its_backoff(parts: Parts) -> None:
    marker = parts.marker()
    job = await parts.create(JobKind.PIPELINE, "boom", {"marker": str(marker)}, max_attempts=2)

    async def requeued() -> Job | None:
        current = await parts.get(job.id)
        return current if current.status is JobStatus.QUEUED and current.attempts == 1 else None

    async with running(parts):
        first: Job = await eventually(requeued)
        assert first.run_at == parts.clock() + RETRY_S  # the policy's backoff, no jitter
        assert first.error is not None
        assert first.error["code"] == "STEP_FAILED"
        assert [h["error"]["code"] for h in first.history] == ["STEP_FAILED"]
        assert first.lease_owner is None
        assert runs(marker) == 1
        # Not due yet: the worker keeps polling and leaves it alone.
        parts.clock.advance(RETRY_S - 1)
        await polls(parts)
        waiting = await parts.get(job.id)
        assert (waiting.status, waiting.attempts, runs(marker)) == (JobStatus.QUEUED, 1, 1)
        parts.clock.advance(1)  # now it is due
        done = await job_reaches(parts.store, job.id, JobStatus.FAILED, JobStatus.COMPLETED)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 2  # max_attempts: no third run
    assert runs(marker) == 2
    assert done.error is not None
    assert done.error["code"] == "STEP_FAILED"
    assert [h["attempt"] for h in done.history] == [1, 2]
    assert [h["error"]["code"] for h in done.history] == ["STEP_FAILED", "STEP_FAILED"]


async def test_a_step_with_its_own_retries_is_not_retried_by_the_job(parts: Parts) -> None:
    marker = parts.marker()
    job = await parts.create(
        JobKind.PIPELINE, "boom-retried", {"marker": str(marker)}, max_attempts=3
    )
    async with running(parts):
        done = await job_reaches(parts.store, job.id, JobStatus.FAILED, JobStatus.COMPLETED)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1  # the job's retries did not multiply the step's
    assert runs(marker) == 2  # the step's retry.max_attempts
    assert len(done.history) == 1


async def test_a_cancel_request_stops_a_running_job(parts: Parts) -> None:
    gate, opened = parts.gate()  # never opened: only the cancel can end the step
    job = await parts.create(JobKind.PIPELINE, "cancellable", {"gate": gate})
    async with running(parts):
        await step_running(parts, job.id)
        await parts.store.request_cancel(job.id)
        assert (await parts.get(job.id)).status is JobStatus.PROCESSING  # the worker's to end
        done = await job_reaches(parts.store, job.id, JobStatus.CANCELLED, JobStatus.COMPLETED)
    assert done.status is JobStatus.CANCELLED
    assert not opened.is_set()
    assert done.error is not None
    assert done.error["code"] == "CANCELLED"
    assert [s["status"] for s in done.steps] == ["CANCELLED", "PENDING"]
    assert done.attempts == 1
    assert done.history[-1]["error"]["code"] == "CANCELLED"


async def test_the_heartbeat_keeps_a_slow_jobs_lease(parts: Parts) -> None:
    gate, opened = parts.gate()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"gate": gate})
    async with running(parts):
        await step_running(parts, job.id)
        for _ in range(3):  # well past the first lease, a little at a time
            parts.clock.advance(CONFIG.lease_s * 0.9)

            async def renewed() -> bool:
                current = await parts.get(job.id)
                return current.lease_expires_at == parts.clock() + CONFIG.lease_s

            await eventually(renewed)
        assert await parts.store.claim("w-other", 1, 60.0) == []  # still w-a's
        opened.set()
        done = await job_reaches(parts.store, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 1
    assert [h["worker"] for h in done.history] == ["w-a"]


async def test_a_lost_lease_discards_the_workers_outcome(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    gate, opened = parts.gate()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"gate": gate})
    async with running(parts) as a:
        await step_running(parts, job.id)
        # Worker A stalls past its lease; another worker takes the job over. (No await
        # between the two: A's heartbeat cannot renew the lease in between.)
        parts.clock.advance(CONFIG.lease_s * 5)
        taken = await parts.store.claim("w-other", 1, 60.0)
        assert [(j.id, j.attempts, j.previous_owner) for j in taken] == [(job.id, 2, "w-a")]
        opened.set()  # A's step finishes; its outcome is A's to write, if it still could
        await a.stopped()  # A drained: whatever it was going to write, it has tried
    assert "lease lost before it finished; result discarded" in caplog.text
    after = await parts.get(job.id)
    assert after.status is JobStatus.PROCESSING
    assert (after.lease_owner, after.attempts) == ("w-other", 2)
    assert (after.result, after.error, after.history) == (None, None, [])
    # The new owner's lease is intact: its outcome is the one that counts.
    finished = await parts.store.transition(
        job.id, JobStatus.COMPLETED, lease=taken[0].lease, changes={"result": {"by": "w-other"}}
    )
    assert finished is not None
    assert finished.result == {"by": "w-other"}


async def test_stopping_drains_a_running_job(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelplex.jobs.worker")
    gate, opened = parts.gate()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"gate": gate})
    async with running(parts) as a:
        await step_running(parts, job.id)
        a.stop.set()
        await eventually(lambda: "draining 1 jobs" in caplog.text)
        assert not a.task.done()  # waiting for the job, not gone
        opened.set()
        await wait_task(a.task)
    done = await parts.get(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"gate": gate, "trail": ["one", "two"]}
    assert done.attempts == 1


async def test_a_job_that_outlasts_the_drain_is_released_uncounted(parts: Parts) -> None:
    gate, _ = parts.gate()  # never opened while the worker runs
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"gate": gate})
    async with running(parts, replace(CONFIG, drain_s=0.01)) as a:
        await step_running(parts, job.id)
        await a.stopped()
    released = await parts.get(job.id)
    assert released.status is JobStatus.QUEUED
    assert released.attempts == 0  # the attempt never reached an outcome
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    assert released.run_at == parts.clock()  # due again at once
    assert (released.history, released.result, released.error) == ([], None, None)
    again = await parts.store.claim("w-next", 1, 60.0)
    assert [(j.id, j.attempts, j.previous_owner) for j in again] == [(job.id, 1, None)]


async def test_a_cancelled_batch_keeps_the_lines_that_ran(parts: Parts) -> None:
    """A chunk cancelled midway: its first line ran and stays in the results and
    the counts; the lines after it are cancelled."""
    (done_gate, opened), (held, _) = parts.gate(), parts.gate()
    opened.set()
    items = [
        {"custom_id": "ran", "input": {"gate": done_gate}},
        {"custom_id": "stopped", "input": {"gate": held}},
        {"custom_id": "never", "input": {"gate": done_gate}},
    ]
    chunk = NewJob(
        kind=JobKind.BATCH_CHUNK, target="cancellable", max_attempts=1, steps=["chunk"],
        input={"target_kind": "pipeline", "items": items},
    )  # fmt: skip
    batch = await parts.store.create_batch(
        NewBatch(JobKind.PIPELINE, "cancellable", None, 3, []), [chunk]
    )
    async with running(parts):
        chunk_id = (await parts.store.batch_chunks(batch.id, -1, 1))[0].id
        await eventually(lambda: _progressed(parts, chunk_id))
        await parts.store.cancel_batch(batch.id)
        ended = await eventually(lambda: _finished_batch(parts, batch.id))
    assert ended.status is BatchStatus.CANCELLED
    assert (ended.completed, ended.failed) == (1, 0)
    service = BatchService(parts.store, parts.service())
    results = [orjson.loads(line) async for line in service.lines(batch.id, errors=False)]
    assert [r["custom_id"] for r in results] == ["ran"]


async def _progressed(parts: Parts, job_id: str) -> bool:
    return (await parts.get(job_id)).progress > 0


async def _finished_batch(parts: Parts, batch_id: str) -> Batch | None:
    batch = await parts.store.get_batch(batch_id)
    return batch if batch is not None and batch.finished_at is not None else None
