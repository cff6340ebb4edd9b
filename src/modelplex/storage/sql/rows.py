"""Rows of the job store's tables <-> the domain's records."""

from __future__ import annotations

from typing import Any

from modelplex.ids import new_id
from modelplex.records import (
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Job,
    JobKind,
    JobStatus,
    NewBatch,
    NewJob,
    pending_steps,
)


def job_from_row(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        kind=JobKind(m["kind"]),
        target=m["target"],
        version=m["version"],
        status=JobStatus(m["status"]),
        priority=m["priority"],
        input=m["input"],
        input_ref=m["input_ref"],
        upload_ref=m["upload_ref"],
        result=m["result"],
        result_ref=m["result_ref"],
        error=m["error"],
        metadata=m["job_metadata"],
        callback_url=m["callback_url"],
        callback_events=m["callback_events"] or [],
        idempotency_key=m["idempotency_key"],
        request_hash=m["request_hash"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        history=m["history"] or [],
        steps=m["steps"] or [],
        progress=m["progress"],
        cancel_requested=m["cancel_requested"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        run_at=m["run_at"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
        batch_id=m["batch_id"],
        chunk_index=m["chunk_index"],
        crashes=m["crashes"],
        previous_owner=m.get("previous_owner"),
    )


def delivery_from_row(row: Any) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        job_id=m["job_id"],
        event=m["event"],
        url=m["url"],
        payload=m["payload"],
        status=DeliveryStatus(m["status"]),
        attempts=m["attempts"] or [],
        next_attempt_at=m["next_attempt_at"],
        created_at=m["created_at"],
    )


def batch_from_row(row: Any) -> Batch:
    m = row._mapping
    return Batch(
        id=m["id"],
        kind=JobKind(m["kind"]),
        target=m["target"],
        version=m["version"],
        status=BatchStatus(m["status"]),
        total=m["total"],
        completed=m["completed"],
        failed=m["failed"],
        chunks=m["chunks"],
        chunks_done=m["chunks_done"],
        refused=m["refused"],
        metadata=m["batch_metadata"],
        created_at=m["created_at"],
        finished_at=m["finished_at"],
    )


def new_job_row(
    job: NewJob, now: float, *, batch_id: str | None = None, chunk_index: int | None = None
) -> dict[str, Any]:
    return {
        "id": new_id("job"),
        "kind": job.kind.value,
        "target": job.target,
        "version": job.version,
        "status": JobStatus.QUEUED.value,
        "priority": job.priority,
        "input": job.input,
        "input_ref": job.input_ref,
        "upload_ref": job.upload_ref,
        "job_metadata": job.metadata,
        "callback_url": job.callback_url,
        "callback_events": job.callback_events,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "attempts": 0,
        "crashes": 0,
        "max_attempts": job.max_attempts,
        "history": [],
        "steps": pending_steps(job.steps),
        "progress": 0.0,
        "cancel_requested": False,
        "run_at": now,
        "created_at": now,
        "updated_at": now,
        "batch_id": batch_id,
        "chunk_index": chunk_index,
    }


def new_batch_row(batch: NewBatch, chunks: int, now: float) -> dict[str, Any]:
    """A batch being created, with `chunks` chunk jobs to come."""
    return {
        "id": new_id("batch"),
        "kind": batch.kind.value,
        "target": batch.target,
        "version": batch.version,
        "status": BatchStatus.CREATING.value,
        "total": batch.total,
        "completed": 0,
        "failed": len(batch.invalid_lines),
        "chunks": chunks,
        "chunks_done": 0,
        "refused": len(batch.invalid_lines),
        "batch_metadata": batch.metadata,
        "created_at": now,
        "finished_at": None,
    }


def refusal_row(batch_id: str, refusal: dict[str, Any]) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": refusal["line"],
        "custom_id": refusal.get("custom_id"),
        "error": refusal["error"],
    }


def refusal_from_row(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {"custom_id": m["custom_id"], "line": m["line"], "error": m["error"]}
