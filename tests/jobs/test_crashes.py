"""Crashes are not the job's fault: attempts lost with their worker spend a crash
budget of their own, and a job that kills every worker that runs it ends FAILED
with WORKER_CRASHED while its neighbours complete.

In-process over a MemoryStore on a FakeClock: dead workers are claims nobody
renews, and their leases expire when the test moves the clock. (The chaos test
kills real worker processes on PostgreSQL.)
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from modelplex.jobs.worker import WorkerConfig
from modelplex.records import Job, JobKind, JobStatus
from modelplex.retry import Backoff, RetryPolicy
from tests.jobs.units import Parts, job_reaches, wait_task

pytestmark = pytest.mark.anyio

LEASE_S = 1.0
CONFIG = WorkerConfig(
    concurrency=2,
    lease_s=LEASE_S,
    poll_s=0.01,
    drain_s=5.0,
    max_crashes=3,
    retry=RetryPolicy(3, Backoff(base_s=0.0, cap_s=0.0)),
)


async def lose(parts: Parts, job: Job, times: int) -> None:
    """`times` workers claim the job and die holding it."""
    for index in range(times):
        [claimed] = await parts.store.claim(f"w-dead-{index}", 1, LEASE_S)
        assert claimed.id == job.id
        parts.clock.advance(LEASE_S + 1)


async def run_until(parts: Parts, config: WorkerConfig, *jobs: Job) -> list[Job]:
    worker = parts.worker(config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        ends = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
        return [await job_reaches(parts.store, j.id, *ends) for j in jobs]
    finally:
        stop.set()
        await wait_task(task)


async def test_lost_attempts_do_not_spend_the_jobs_own_attempts(parts: Parts) -> None:
    marker = parts.marker()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"marker": str(marker)}, max_attempts=1)
    await lose(parts, job, 2)  # twice more than its one attempt allows
    [done] = await run_until(parts, CONFIG, job)
    assert done.status is JobStatus.COMPLETED, done.error
    assert (done.attempts, done.crashes, done.own_attempts) == (3, 2, 1)
    lost, finished = done.history
    assert (lost["worker"], lost["error"]["code"]) == ("w-dead-1", "LEASE_EXPIRED")
    assert finished["worker"] == "w-a"


async def test_a_job_that_kills_every_worker_fails_with_worker_crashed(parts: Parts) -> None:
    marker = parts.marker()
    poison = await parts.create(JobKind.PIPELINE, "two-steps", {"marker": str(marker)})
    neighbour = await parts.create(JobKind.PIPELINE, "two-steps", {})
    await lose(parts, poison, CONFIG.max_crashes)
    failed, completed = await run_until(parts, CONFIG, poison, neighbour)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error["code"] == "WORKER_CRASHED"
    assert "lost 3 times" in failed.error["message"]
    assert failed.crashes == CONFIG.max_crashes
    assert not marker.exists()  # not run a fourth time
    assert completed.status is JobStatus.COMPLETED, completed.error
    assert (completed.attempts, completed.crashes) == (1, 0)


async def test_a_job_under_its_crash_budget_keeps_its_retries(parts: Parts) -> None:
    marker = parts.marker()
    job = await parts.create(JobKind.PIPELINE, "boom", {"marker": str(marker)}, max_attempts=2)
    await lose(parts, job, CONFIG.max_crashes - 1)
    [done] = await run_until(parts, replace(CONFIG, concurrency=1), job)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error["code"] == "STEP_FAILED"  # its own failure, after its own attempts
    assert int(marker.read_text()) == 2
    assert (done.own_attempts, done.crashes) == (2, CONFIG.max_crashes - 1)
