"""What a webhook says: one envelope and one job document for every event type.

Standard Webhooks' payload shape (`type`, `timestamp`, `data`) plus the
message's `id`, the same as the `webhook-id` header and the same on every
retry, so a receiver can drop a delivery it has already seen. `data` is the
job at the moment of the event, with the field names and formats of
`GET /v1/jobs/{id}` (a subset of it: no links, history or callback) and every
field present in every event (null where it does not apply; the target's key
is `model`, `pipeline` or `batch_chunk`, as there), so one parser reads them
all. Times are ISO 8601 in UTC.
docs/7-jobs.md documents each field.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from modelplex.ids import new_id
from modelplex.records import Job, JobKind, JobStatus, NewDelivery

STEP = "job.step"
COMPLETED = "job.completed"
FAILED = "job.failed"
CANCELLED = "job.cancelled"
FINISH_EVENTS = {
    JobStatus.COMPLETED: COMPLETED,
    JobStatus.FAILED: FAILED,
    JobStatus.CANCELLED: CANCELLED,
}


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds as the API shows times: ISO 8601, UTC, milliseconds."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def timed(entry: dict[str, Any]) -> dict[str, Any]:
    """A step or history entry with its times as the API shows them."""
    return {**entry, "started_at": iso(entry.get("started_at")),
            "finished_at": iso(entry.get("finished_at"))}  # fmt: skip


def job_data(job: Job, step: int | None = None) -> dict[str, Any]:
    """The job as every event carries it; `step`: the index of the step a
    `job.step` event is about."""
    completed = job.status is JobStatus.COMPLETED
    steps = [timed(s) for s in job.steps]
    return {
        "id": job.id,
        "status": job.status.value,
        job.kind.value if job.kind is not JobKind.BATCH_CHUNK else "batch_chunk": job.target,
        "version": job.version,
        "progress": job.progress,
        "steps": steps,
        "step": None if step is None else {"index": step, **steps[step]},
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "metadata": job.metadata,
        "result": job.result if completed and job.result_ref is None else None,
        "result_in_blob": completed and job.result_ref is not None,
        "error": job.error if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else None,
    }


def job_event(event: str, job: Job, *, step: int | None = None) -> list[NewDelivery]:
    """The delivery of `event` about `job` (as it is now) to its callback URL;
    none if it has no callback URL."""
    if not job.callback_url:
        return []
    message_id = new_id("msg")
    payload = {
        "type": event,
        "id": message_id,
        "timestamp": iso(time.time()),
        "data": job_data(job, step),
    }
    return [NewDelivery(event, job.callback_url, payload, id=message_id)]


def finish_event(
    job: Job, to: JobStatus, at: float | None = None, **changes: Any
) -> list[NewDelivery]:
    """The event of a job that is about to end in `to` at `at` (now), with the changes
    its ending writes (result, error, steps, progress) applied to the copy it describes."""
    event = FINISH_EVENTS.get(to)
    if event is None or not job.callback_url:
        return []
    known = {name: value for name, value in changes.items() if name in _FINISH_FIELDS}
    if to is JobStatus.CANCELLED:  # the worker heard of the request after its claim
        known["cancel_requested"] = True
    ended = replace(job, status=to, finished_at=time.time() if at is None else at, **known)
    return job_event(event, ended)


_FINISH_FIELDS = frozenset(
    {"steps", "progress", "result", "result_ref", "error", "cancel_requested"}
)
