"""What the job store keeps: jobs, batches and webhook deliveries, their statuses,
and the state machines' tables.

    QUEUED ──claim──> PROCESSING ──> COMPLETED | FAILED | CANCELLED
      │                  │  └──retryable failure / release──> QUEUED
      └──cancel──> CANCELLED

    batch: CREATING ──last chunk written──> PROCESSING ──last chunk ends──> COMPLETED
             │ (its creator died: deleted)      │        (every line succeeded),
             │                                  │        PARTIALLY_FAILED (some failed)
             │                                  │        or FAILED (every line failed)
             │                                  └──cancel──> CANCELLED (finished when
             │                                               its last running chunk ends)

A leaf module: the job layer and every store implementation share these
records, and neither imports the other. Stores enforce `JOB_ALLOWED_FROM` and
`BATCH_ALLOWED_FROM` in one guarded update (`UPDATE ... WHERE status IN
allowed_from`); nothing else writes a status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

from modelplex import errors
from modelplex.error_map import wire_error
from modelplex.ids import new_id

Clock = Callable[[], float]
"""Epoch seconds (`time.time`); stores and workers take one so tests can move time.
The SQL store judges leases and due times by the database's clock, not this one."""


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in JOB_TERMINAL


JOB_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

JOB_ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    # PROCESSING -> PROCESSING is a re-claim after the lease expired.
    JobStatus.PROCESSING: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING}),
    JobStatus.COMPLETED: frozenset({JobStatus.PROCESSING}),
    JobStatus.FAILED: frozenset({JobStatus.PROCESSING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
}


class BatchStatus(StrEnum):
    CREATING = "CREATING"
    """Its chunks are still being written; none of them runs yet."""
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    """Finished, every line succeeded."""
    PARTIALLY_FAILED = "PARTIALLY_FAILED"
    """Finished, some lines succeeded and some failed (refused at submission, or when
    their chunk ran)."""
    FAILED = "FAILED"
    """Finished, every line failed."""
    CANCELLED = "CANCELLED"


BATCH_ALLOWED_FROM: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.PROCESSING: frozenset({BatchStatus.CREATING}),
    BatchStatus.COMPLETED: frozenset({BatchStatus.PROCESSING}),
    BatchStatus.PARTIALLY_FAILED: frozenset({BatchStatus.PROCESSING}),
    BatchStatus.FAILED: frozenset({BatchStatus.PROCESSING}),
    BatchStatus.CANCELLED: frozenset({BatchStatus.PROCESSING}),
}


def batch_outcome(completed: int, total: int) -> BatchStatus:
    """How a batch that ran to its end (not cancelled) ended, by its lines: a line
    that did not succeed failed, or was in a chunk cancelled on its own."""
    if completed >= total:
        return BatchStatus.COMPLETED
    return BatchStatus.FAILED if not completed else BatchStatus.PARTIALLY_FAILED


def allowed_sources(
    table: dict[Any, frozenset[Any]], to: Any, only_from: frozenset[Any] | None = None
) -> tuple[str, ...]:
    """The statuses `to` may be reached from (narrowed by `only_from`), sorted, as values."""
    sources = table[to] if only_from is None else table[to] & only_from
    return tuple(sorted(s.value for s in sources))


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


def pending_steps(names: list[str]) -> list[dict[str, Any]]:
    """A job's steps before any of them ran (at creation, and when a job is released)."""
    return [{"name": name, "status": StepStatus.PENDING.value, "progress": 0.0} for name in names]


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job (or one step, or one batch line) failed, as its view shows it."""

    code: str
    message: str
    step: str | None = None
    retryable: bool = False

    @classmethod
    def of(cls, exc: errors.ModelplexError, step: str | None = None) -> JobError:
        """The error table's code and retryability for `exc`."""
        wire = wire_error(exc)
        return cls(wire.code, exc.message, step, wire.retryable)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "step": self.step}


CANCELLED_BY_REQUEST = JobError.of(errors.JobCancelled("cancelled by request")).as_dict()


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
    """Claims of the job (the lease's fencing token): its own attempts plus `crashes`."""
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
    crashes: int = 0
    """Attempts that ended with their worker lost (the lease expired and the job
    was claimed again): they spend the crash budget, not `max_attempts`."""
    previous_owner: str | None = None
    """On a claim: who held the lease before (set when a lost attempt is re-claimed)."""

    @property
    def lease(self) -> Lease:
        return Lease(self.lease_owner or "", self.attempts)

    @property
    def own_attempts(self) -> int:
        """Attempts that ran to an outcome of the job's own (crashes not counted)."""
        return self.attempts - self.crashes


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


class JobChanges(TypedDict, total=False):
    """What a transition may change besides the status. Status, lease, attempts and
    timestamps are the store's own: no caller can pass them through."""

    steps: list[dict[str, Any]]
    progress: float
    history: list[dict[str, Any]]
    result: Any
    result_ref: str | None
    error: dict[str, Any] | None
    run_after_s: float
    """Due again this many seconds from now, by the store's clock (a retry's backoff)."""


CHANGEABLE = frozenset(JobChanges.__annotations__)


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
    id: str = field(default_factory=lambda: new_id("msg"))
    """Given when the event happens, not when it is stored: a job's events are
    delivered in the order of their ids (ULIDs, monotonic within a process)."""


@dataclass(slots=True)
class Batch:
    id: str
    kind: JobKind
    target: str
    version: str | None
    status: BatchStatus
    total: int
    completed: int
    failed: int
    chunks: int
    chunks_done: int
    refused: int
    """Lines refused at submission (counted in `failed` too); the lines themselves
    are stored one per row, read with `BatchStore.batch_refusals`."""
    metadata: dict[str, Any] | None
    created_at: float
    finished_at: float | None


@dataclass(slots=True)
class NewBatch:
    """A batch; its chunk jobs are created with it, in order (chunk 0 first)."""

    kind: JobKind
    target: str
    version: str | None
    total: int
    """Lines in the file, refused ones included."""
    invalid_lines: list[dict[str, Any]]
    """Lines refused at submission, each `{"custom_id", "line", "error"}` (they count
    as failed)."""
    metadata: dict[str, Any] | None = None
