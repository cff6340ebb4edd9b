"""JobRunner.run on jobs a real store created and a worker claimed: model jobs, pipeline
steps, step failures and timeouts, cancellation, batch chunks, step vs job retries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelplex.jobs import requests
from modelplex.jobs.control import Cancelled, Completed, Failed, JobControl, Outcome
from modelplex.jobs.service import SubmitRequest
from modelplex.records import Job, JobError, JobKind
from tests.jobs.units import Parts, eventually, wait_task

pytestmark = pytest.mark.anyio

DOUBLED = {
    "model": {"name": "doubler", "version": "1"},
    "predictions": [{"y": [2.0, 4.0]}, {"y": [6.0, 8.0]}],
}


def as_json(value: Any) -> Any:
    """What the worker stores: the outcome's result through JSON."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


async def run(parts: Parts, job: Job) -> tuple[Outcome, JobControl]:
    control = JobControl(await parts.claim(job.id))
    return await parts.runner.run(control.job, control), control


async def run_pipeline(parts: Parts, name: str, data: Any) -> tuple[Outcome, JobControl]:
    return await run(parts, await parts.create(JobKind.PIPELINE, name, data))


def failure(outcome: Outcome) -> JobError:
    assert isinstance(outcome, Failed), outcome
    return outcome.error


def statuses(control: JobControl) -> list[str]:
    return [step["status"] for step in control.steps]


def runs(marker: Path) -> int:
    return int(marker.read_text()) if marker.exists() else 0


# -- model jobs ---------------------------------------------------------------
async def test_a_submitted_model_job_runs_its_checked_request(parts: Parts) -> None:
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]], "parameters": {"outputs": ["y"]}}
    job, created = await parts.service().submit(SubmitRequest(JobKind.MODEL, "doubler", body))
    assert created
    assert requests.is_checked(job.input)  # stored checked, not as the body
    assert job.version == "1"
    outcome, control = await run(parts, job)
    assert isinstance(outcome, Completed), outcome
    assert as_json(outcome.result) == DOUBLED
    assert outcome.lines is None
    assert statuses(control) == ["COMPLETED"]
    assert control.steps[0]["progress"] == 1.0
    assert control.steps[0]["finished_at"] >= control.steps[0]["started_at"]
    assert control.progress == 1.0


async def test_a_legacy_model_job_with_a_raw_predict_body_still_runs(parts: Parts) -> None:
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    for version in (None, "1"):  # queued before submission pinned and checked requests
        job = await parts.create(JobKind.MODEL, "doubler", body, version=version)
        assert not requests.is_checked(job.input)
        outcome, control = await run(parts, job)
        assert isinstance(outcome, Completed), outcome
        assert as_json(outcome.result) == DOUBLED
        assert statuses(control) == ["COMPLETED"]


async def test_a_legacy_body_the_model_refuses_fails_the_inference_step(parts: Parts) -> None:
    job = await parts.create(JobKind.MODEL, "doubler", {"instance": [1.0, 2.0, 3.0]})
    outcome, control = await run(parts, job)
    error = failure(outcome)
    assert (error.code, error.step, error.retryable) == ("INVALID_INPUT", "inference", False)
    assert statuses(control) == ["FAILED"]


async def test_a_checked_request_for_a_changed_signature_is_refused(parts: Parts) -> None:
    body = {"instance": [1.0, 2.0]}
    job, _ = await parts.service().submit(SubmitRequest(JobKind.MODEL, "doubler", body))
    tampered = {**job.input, "signature": "0" * 16}
    stale = await parts.create(JobKind.MODEL, "doubler", tampered, version="1")
    await parts.store.request_cancel(job.id)  # only the tampered one is claimed below
    outcome, _ = await run(parts, stale)
    error = failure(outcome)
    assert error.code == "CONFLICT"
    assert "has changed its signature" in error.message
    assert not error.retryable


# -- pipelines ----------------------------------------------------------------
async def test_pipeline_steps_run_in_order_with_progress(parts: Parts) -> None:
    gate, opened = parts.gate()
    job = await parts.create(
        JobKind.PIPELINE,
        "two-steps",
        {"gate": gate},
        callback_url="http://127.0.0.1:9/hook",
        callback_events=["job.step"],
    )
    control = JobControl(await parts.claim(job.id))
    running = asyncio.create_task(parts.runner.run(control.job, control))
    # The first step reported half its work and waits: the job is a quarter done.
    await eventually(lambda: control.steps[0].get("progress") == 0.5)
    assert statuses(control) == ["RUNNING", "PENDING"]
    assert control.progress == 0.25
    assert control.dirty
    opened.set()
    outcome = await wait_task(running)
    assert isinstance(outcome, Completed), outcome
    assert outcome.result == {"gate": gate, "trail": ["one", "two"]}
    assert statuses(control) == ["COMPLETED", "COMPLETED"]
    assert control.progress == 1.0
    assert control.steps[0]["finished_at"] <= control.steps[1]["started_at"]
    # Each step's start and end is a job.step event for the callback.
    steps = [(e.event, e.payload["data"]["step"]) for e in control.events]
    events = [(event, step["name"], step["status"]) for event, step in steps]
    assert events == [
        ("job.step", "one", "RUNNING"),
        ("job.step", "one", "COMPLETED"),
        ("job.step", "two", "RUNNING"),
        ("job.step", "two", "COMPLETED"),
    ]


async def test_a_model_step_runs_through_the_model(parts: Parts) -> None:
    outcome, control = await run_pipeline(parts, "model-step", {"rows": [[1, 2], [3, 4], [5, 6]]})
    assert isinstance(outcome, Completed), outcome
    assert outcome.result == {"y": [[2.0, 4.0], [6.0, 8.0], [10.0, 12.0]]}
    assert statuses(control) == ["COMPLETED"] * 3


async def test_a_step_error_keeps_its_own_code(parts: Parts) -> None:
    outcome, control = await run_pipeline(parts, "refuses", {})
    assert failure(outcome) == JobError(
        "INPUT_DECODE_FAILED", "'photo.jpg' is not an image", "refuse", retryable=False
    )
    assert statuses(control) == ["FAILED"]
    assert control.steps[0]["error"] == {
        "code": "INPUT_DECODE_FAILED",
        "message": "'photo.jpg' is not an image",
        "step": "refuse",
    }


async def test_an_unexpected_exception_is_a_retryable_step_failure(parts: Parts) -> None:
    outcome, control = await run_pipeline(parts, "boom", {"marker": str(parts.marker())})
    error = failure(outcome)
    assert (error.code, error.step, error.retryable) == ("STEP_FAILED", "boom", True)
    assert error.message == "step 'boom' failed: RuntimeError (see the worker log)"
    assert "secret" not in error.message  # the exception's text stays in the log
    assert statuses(control) == ["FAILED"]


async def test_a_step_past_its_timeout_is_a_step_timeout(parts: Parts) -> None:
    outcome, control = await run_pipeline(parts, "stalls", {})
    error = failure(outcome)
    assert (error.code, error.step, error.retryable) == ("STEP_TIMEOUT", "stall", True)
    assert error.message == "step 'stall' did not finish within 0.05 s"
    assert statuses(control) == ["FAILED"]


async def test_a_model_step_past_its_timeout_is_an_inference_timeout(parts: Parts) -> None:
    outcome, control = await run_pipeline(parts, "slow-model", {"rows": [[1, 2]]})
    error = failure(outcome)
    assert (error.code, error.step, error.retryable) == ("INFERENCE_TIMEOUT", "double", True)
    assert statuses(control) == ["COMPLETED", "FAILED"]


async def test_a_cancelled_job_runs_no_step(parts: Parts) -> None:
    marker = parts.marker()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"marker": str(marker)})
    control = JobControl(await parts.claim(job.id))
    control.cancel.set()
    outcome = await parts.runner.run(control.job, control)
    assert isinstance(outcome, Cancelled)
    assert runs(marker) == 0
    assert statuses(control) == ["PENDING", "PENDING"]


async def test_a_cancel_during_a_step_stops_before_the_next(parts: Parts) -> None:
    gate, opened = parts.gate()
    marker = parts.marker()
    job = await parts.create(JobKind.PIPELINE, "two-steps", {"gate": gate, "marker": str(marker)})
    control = JobControl(await parts.claim(job.id))
    running = asyncio.create_task(parts.runner.run(control.job, control))
    await eventually(lambda: control.steps[0].get("progress") == 0.5)
    control.cancel.set()  # what the worker does when a cancel request reaches it
    opened.set()  # the step ignores cancellation and finishes
    outcome = await wait_task(running)
    assert isinstance(outcome, Cancelled)
    assert runs(marker) == 1  # the first step ran; the second never started
    assert statuses(control) == ["COMPLETED", "PENDING"]


async def test_a_step_that_checks_for_cancellation_stops_at_once(parts: Parts) -> None:
    gate, _ = parts.gate()  # never opened: only the cancel ends the step
    job = await parts.create(JobKind.PIPELINE, "cancellable", {"gate": gate})
    control = JobControl(await parts.claim(job.id))
    running = asyncio.create_task(parts.runner.run(control.job, control))
    await eventually(lambda: control.steps[0].get("progress") == 0.5)
    control.cancel.set()
    outcome = await wait_task(running)
    assert isinstance(outcome, Cancelled)
    assert statuses(control) == ["CANCELLED", "PENDING"]


# -- batch chunks -------------------------------------------------------------
async def test_a_chunk_reports_its_good_and_bad_lines(parts: Parts) -> None:
    items = [
        {"custom_id": "good", "input": [1.0, 2.0]},
        {"custom_id": "bad", "input": [1.0, 2.0, 3.0]},
    ]
    chunk = {"target_kind": "model", "items": items, "options": None}
    outcome, control = await run(
        parts, await parts.create(JobKind.BATCH_CHUNK, "doubler", chunk, version="1")
    )
    assert isinstance(outcome, Completed), outcome
    assert outcome.lines == (1, 1)
    good, bad = as_json(outcome.result)["items"]
    assert good == {"custom_id": "good", "output": {"y": [2.0, 4.0]}}
    assert bad["custom_id"] == "bad"
    assert bad["error"]["code"] == "INVALID_INPUT"
    assert "output" not in bad
    assert statuses(control) == ["COMPLETED"]


async def test_a_pipeline_chunk_runs_each_line_on_its_own(parts: Parts) -> None:
    items = [
        {"custom_id": "a", "input": {"rows": [[1, 2]]}},
        {"custom_id": "b", "input": {"no-rows": True}},
    ]
    chunk = {"target_kind": "pipeline", "items": items}
    outcome, control = await run(
        parts, await parts.create(JobKind.BATCH_CHUNK, "model-step", chunk)
    )
    assert isinstance(outcome, Completed), outcome
    assert outcome.lines == (1, 1)
    a, b = outcome.result["items"]
    assert a == {"custom_id": "a", "output": {"y": [[2.0, 4.0]]}}
    assert b["custom_id"] == "b"
    assert (b["error"]["code"], b["error"]["step"]) == ("STEP_FAILED", "prepare")
    assert statuses(control) == ["COMPLETED"]  # the chunk's one step, not the lines' steps


async def test_a_cancelled_chunk_keeps_the_lines_that_ran_and_stops_the_rest(
    parts: Parts,
) -> None:
    (first, first_gate), (second, _) = parts.gate(), parts.gate()
    first_gate.set()  # the first line runs through; the second waits until cancelled
    items = [
        {"custom_id": "ran", "input": {"gate": first}},
        {"custom_id": "stopped", "input": {"gate": second}},
        {"custom_id": "never", "input": {"gate": first}},
    ]
    chunk = {"target_kind": "pipeline", "items": items}
    job = await parts.create(JobKind.BATCH_CHUNK, "cancellable", chunk)
    control = JobControl(await parts.claim(job.id))
    running = asyncio.create_task(parts.runner.run(control.job, control))
    await eventually(lambda: control.progress > 0)  # the first line is done
    control.cancel.set()
    outcome = await wait_task(running)
    assert isinstance(outcome, Cancelled), outcome
    assert outcome.lines == (1, 0)
    assert [item["custom_id"] for item in outcome.result["items"]] == ["ran"]
    assert statuses(control) == ["CANCELLED"]


async def test_a_cancelled_model_chunk_takes_its_waiting_lines_out_of_the_queue(
    parts: Parts,
) -> None:
    """Cancelled before any of its lines (half a second each) could get an answer:
    none gets one, though they all were in the model's queue."""
    items = [{"custom_id": f"l{i}", "input": [1.0, 2.0]} for i in range(8)]
    chunk = {"target_kind": "model", "items": items, "options": None}
    job = await parts.create(JobKind.BATCH_CHUNK, "sleepy", chunk, version="1")
    control = JobControl(await parts.claim(job.id))
    running = asyncio.create_task(parts.runner.run(control.job, control))
    control.cancel.set()
    outcome = await wait_task(running)
    assert isinstance(outcome, Cancelled), outcome
    assert outcome.lines == (0, 0)
    assert outcome.result == {"items": []}


# -- step attempts and job attempts do not multiply ----------------------------
async def test_a_step_with_its_own_retry_runs_its_attempts_and_ends_the_job(
    parts: Parts,
) -> None:
    marker = parts.marker()
    outcome, control = await run_pipeline(parts, "boom-retried", {"marker": str(marker)})
    error = failure(outcome)
    assert runs(marker) == 2  # retry.max_attempts, in this one job attempt
    assert error.code == "STEP_FAILED"
    assert not error.retryable  # the step's retries were the retries: no job retry
    assert statuses(control) == ["FAILED"]


async def test_a_step_without_retry_leaves_retrying_to_the_job(parts: Parts) -> None:
    marker = parts.marker()
    for attempt in (1, 2):  # each job attempt runs the step exactly once
        outcome, _ = await run_pipeline(parts, "boom", {"marker": str(marker)})
        assert failure(outcome).retryable
        assert runs(marker) == attempt
