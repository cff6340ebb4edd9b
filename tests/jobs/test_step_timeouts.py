"""A sync step past its timeout: signalled, waited for, and never run twice at once.

Steps count their own running copies (`units.Copies`): `overrun` works in
slices and stops when `check_cancelled()` raises; `stubborn` ignores every
signal until the test opens its gate.
"""

from __future__ import annotations

import asyncio

import pytest

from modelplex.executors import Pool
from modelplex.jobs.control import Failed, JobControl
from modelplex.jobs.runner import JobRunner
from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.records import JobKind, JobStatus
from modelplex.retry import Backoff, RetryPolicy
from tests.jobs.units import Parts, eventually, job_reaches, wait_task

pytestmark = pytest.mark.anyio

GRACE_S = 0.2


def runner_of(parts: Parts, threads: int = 2, grace_s: float = GRACE_S) -> JobRunner:
    return JobRunner(
        parts.dataplane,
        parts.pipelines,
        parts.blobs,
        step_threads=Pool("steps", threads),
        stop_grace_s=grace_s,
    )


async def test_a_step_past_its_timeout_is_stopped_before_its_retry(parts: Parts) -> None:
    key, copies = parts.copies()
    job = await parts.create(JobKind.PIPELINE, "overruns", {"copies": key})
    control = JobControl(await parts.claim(job.id))
    outcome = await runner_of(parts).run(control.job, control)
    assert isinstance(outcome, Failed), outcome
    assert (outcome.error.code, outcome.error.step) == ("STEP_TIMEOUT", "overrun")
    assert not outcome.error.retryable  # the step's own retries were the retries
    assert copies.started == 3  # each of retry.max_attempts ran ...
    assert copies.most == 1  # ... but never two at once
    assert copies.running == 0  # and none is left running when the job's outcome is known


async def test_a_job_retry_starts_only_once_the_timed_out_step_has_stopped(parts: Parts) -> None:
    key, copies = parts.copies()
    job = await parts.create(JobKind.PIPELINE, "overruns-once", {"copies": key})
    control = JobControl(await parts.claim(job.id))
    outcome = await runner_of(parts).run(control.job, control)
    assert isinstance(outcome, Failed), outcome
    assert (outcome.error.code, outcome.error.retryable) == ("STEP_TIMEOUT", True)
    # The outcome is returned (and a job retry may be claimed) only after the copy stopped.
    assert (copies.started, copies.running) == (1, 0)


async def test_a_step_that_ignores_the_signal_is_stuck_and_never_retried(parts: Parts) -> None:
    key, copies = parts.copies()
    gate, opened = parts.gate()
    job = await parts.create(JobKind.PIPELINE, "stuck", {"copies": key, "gate": gate})
    control = JobControl(await parts.claim(job.id))
    runner = runner_of(parts)
    outcome = await runner.run(control.job, control)
    assert isinstance(outcome, Failed), outcome
    error = outcome.error
    assert (error.code, error.step, error.retryable) == ("STEP_STUCK", "stubborn", False)
    assert "did not stop" in error.message
    assert (copies.started, copies.running) == (1, 1)  # no retry beside the one still running
    assert runner.abandoned == 1
    opened.set()
    await eventually(lambda: runner.abandoned == 0)  # its thread ended: the slot is back
    assert copies.running == 0


async def test_a_worker_fails_a_stuck_job_and_keeps_its_slot_until_the_thread_ends(
    parts: Parts,
) -> None:
    key, copies = parts.copies()
    gate, opened = parts.gate()
    config = WorkerConfig(
        concurrency=1, lease_s=1.0, poll_s=0.01, drain_s=5.0,
        retry=RetryPolicy(5, Backoff(base_s=0.0, cap_s=0.0)),
    )  # fmt: skip
    runner = runner_of(parts, threads=1)
    worker = Worker(parts.store, runner, parts.blobs, config, name="w-a", clock=parts.clock)
    stuck = await parts.create(JobKind.PIPELINE, "stuck", {"copies": key, "gate": gate})
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        failed = await job_reaches(parts.store, stuck.id, JobStatus.FAILED, JobStatus.COMPLETED)
        assert failed.error is not None
        assert failed.error["code"] == "STEP_STUCK"
        assert (failed.attempts, copies.started) == (1, 1)  # retries left, none used
        # Its one step thread is still held: the next job waits for it, not beside it.
        after = await parts.create(JobKind.PIPELINE, "two-steps", {})
        assert runner.abandoned == 1
        opened.set()
        done = await job_reaches(parts.store, after.id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert done.status is JobStatus.COMPLETED, done.error
        assert done.steps[0]["started_at"] >= copies.left_at
    finally:
        stop.set()
        await wait_task(task)
