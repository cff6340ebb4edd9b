"""Job records and the state machine's table.

    QUEUED ──claim──> PROCESSING ──> COMPLETED | FAILED | CANCELLED
      │                  │  └──retryable failure / release──> QUEUED
      └──cancel──> CANCELLED

The store's one transition function enforces `ALLOWED_FROM` in the database;
nothing else writes a job's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    # PROCESSING -> PROCESSING is a re-claim after the lease expired.
    JobStatus.PROCESSING: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING}),
    JobStatus.COMPLETED: frozenset({JobStatus.PROCESSING}),
    JobStatus.FAILED: frozenset({JobStatus.PROCESSING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
}


CANCELLED_BY_REQUEST = {"code": "CANCELLED", "message": "cancelled by request"}


class JobKind(StrEnum):
    MODEL = "model"
    PIPELINE = "pipeline"
    BATCH_CHUNK = "batch_chunk"


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class JobError:
    code: str
    message: str
    step: str | None = None
    retryable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "step": self.step}


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a job: only this worker, in this attempt, may write its outcome."""

    worker: str
    attempt: int


@dataclass(slots=True)
class Job:
    id: str
    kind: JobKind
    target: str
    version: str | None
    status: JobStatus
    priority: int
    input: Any
    input_ref: str | None
    upload_ref: str | None
    result: Any
    result_ref: str | None
    error: dict[str, Any] | None
    metadata: dict[str, Any] | None
    callback_url: str | None
    callback_events: list[str]
    idempotency_key: str | None
    request_hash: str | None
    attempts: int
    max_attempts: int
    history: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    progress: float
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: float | None
    run_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    batch_id: str | None
    chunk_index: int | None
    previous_owner: str | None = None
    """On a claim: who held the lease before (set when a lost attempt is re-claimed)."""

    @property
    def lease(self) -> Lease:
        return Lease(self.lease_owner or "", self.attempts)


@dataclass(slots=True)
class NewJob:
    kind: JobKind
    target: str
    max_attempts: int
    steps: list[str]
    version: str | None = None
    input: Any = None
    input_ref: str | None = None
    upload_ref: str | None = None
    """A file uploaded with the job (steps read it with `ctx.read_upload()`)."""
    priority: int = 0
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    callback_events: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    request_hash: str | None = None
    batch_id: str | None = None
    chunk_index: int | None = None


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


@dataclass(slots=True)
class Delivery:
    id: str
    job_id: str
    event: str
    url: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: list[dict[str, Any]]
    next_attempt_at: float
    created_at: float


@dataclass(slots=True)
class NewDelivery:
    event: str
    url: str
    payload: dict[str, Any]


@dataclass(slots=True)
class Batch:
    id: str
    kind: JobKind
    target: str
    version: str | None
    status: JobStatus
    total: int
    completed: int
    failed: int
    chunks: int
    chunks_done: int
    invalid_lines: list[dict[str, Any]]
    metadata: dict[str, Any] | None
    created_at: float
    finished_at: float | None
