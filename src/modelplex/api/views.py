"""How models, jobs, batches and webhook deliveries look on the /v1 wire, with their links."""

from __future__ import annotations

from typing import Any

from modelplex.core.catalog import ModelInfo
from modelplex.jobs.events import iso, timed
from modelplex.records import Batch, Delivery, DeliveryStatus, Job, JobKind, JobStatus
from modelplex.redaction import redact_url


def model_summary(model: ModelInfo) -> dict[str, Any]:
    return {
        "name": model.name,
        "state": model.state.value,
        "default_version": model.default_version,
        "versions": model.version_names,
        "description": model.description,
        "reason": model.reason,
    }


def model_detail(model: ModelInfo) -> dict[str, Any]:
    doc = model_summary(model)
    if not model.inputs:  # the folder's model.toml could not be read
        return doc
    doc.update(
        inputs=[s.describe() for s in model.inputs],
        outputs=[s.describe() for s in model.outputs],
        labels=list(model.labels) if model.labels is not None else None,
        version_details=[
            {**v.describe(), "stats": v.stats.as_dict()} if v.stats else v.describe()
            for v in model.versions
        ],
    )
    reference = model.reference
    if reference is not None and reference.batching is not None:
        doc["batching"] = reference.batching.as_dict()
        doc["timeout_ms"] = reference.timeout_ms
    if model.preprocessing is not None:
        doc["preprocessing"] = model.preprocessing
    return doc


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    view: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        job.kind.value if job.kind is not JobKind.BATCH_CHUNK else "batch_chunk": job.target,
        "version": job.version,
        "priority": job.priority,
        "progress": job.progress,
        "steps": [timed(step) for step in job.steps],
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "metadata": job.metadata,
        "callback_url": redact_url(job.callback_url),
        "callback_events": job.callback_events,
        "history": [timed(entry) for entry in job.history],
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "cancel": f"/v1/jobs/{job.id}/cancel",
            "deliveries": f"/v1/jobs/{job.id}/deliveries",
            "result": f"/v1/jobs/{job.id}/result",
        },
    }
    if job.batch_id:
        view["batch_id"] = job.batch_id
    if job.status is JobStatus.COMPLETED:
        view["result"] = job.result if job.result_ref is None else None
        view["result_in_blob"] = job.result_ref is not None
    if job.error and job.status is not JobStatus.COMPLETED:
        view["error"] = job.error
    return view


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    pending = delivery.status is DeliveryStatus.PENDING
    return {
        "id": delivery.id,
        "event": delivery.event,
        "url": redact_url(delivery.url),
        "status": delivery.status.value,
        "created_at": iso(delivery.created_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if pending else None,
        "attempts": [{**a, "at": iso(a.get("at"))} for a in delivery.attempts],
    }


REFUSALS_SHOWN = 20
"""Refused lines a batch's GET shows; the errors JSONL streams all of them."""


def batch_view(batch: Batch, refusals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`refusals`: the first refused lines, where the caller read them (GET does)."""
    finished = batch.completed + batch.failed
    view: dict[str, Any] = {
        "id": batch.id,
        "status": batch.status.value,
        batch.kind.value: batch.target,
        "version": batch.version,
        "counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
            "refused": batch.refused,
            "pending": max(0, batch.total - finished) if batch.finished_at is None else 0,
            "cancelled": max(0, batch.total - finished) if batch.finished_at is not None else 0,
        },
        "progress": round(finished / batch.total, 4) if batch.total else 1.0,
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
        "metadata": batch.metadata,
        "links": {
            "self": f"/v1/batches/{batch.id}",
            "results": f"/v1/batches/{batch.id}/results",
            "errors": f"/v1/batches/{batch.id}/errors",
            "cancel": f"/v1/batches/{batch.id}/cancel",
        },
    }
    if refusals is not None:
        view["refusals"] = refusals[:REFUSALS_SHOWN]
        view["refusals_shown"] = REFUSALS_SHOWN
    return view
