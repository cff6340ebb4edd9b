"""The store interface the job layer depends on, and nothing more.

It also holds the model repository's generations (`RepositoryStore`): the
changes load and unload calls made, which every serving and worker process
follows.

Two implementations keep the same contract (`tests/storage/test_contract.py`
runs one suite over all of them): `SqlStore` (SQLite embedded, PostgreSQL
scale-out) and `MemoryStore` (one process, for unit tests). Every method is a
single atomic step; every status change is guarded by the state machines'
tables in `modelplex.records`, so a transition that is not allowed from the
current state, or written by a worker that no longer holds the lease, changes
nothing and returns None.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from modelplex.records import (
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Job,
    JobChanges,
    JobStatus,
    Lease,
    NewBatch,
    NewDelivery,
    NewJob,
)


class DuplicateKey(Exception):
    """An idempotency key is already taken (carries the existing job)."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


@dataclass
class BatchPart:
    """A piece of a batch being created: lines refused in it, and its chunk jobs."""

    refused: list[dict[str, Any]]
    """`{"custom_id", "line", "error"}` each (they count as failed)."""
    chunks: list[NewJob]
    """The next chunk jobs, in order."""
    lines: int
    """Valid lines in those chunks (the batch's total counts them and the refused)."""


class JobStore(Protocol):
    async def create(self, job: NewJob) -> Job:
        """Insert a QUEUED job; DuplicateKey if its idempotency key is taken."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def get_by_key(self, key: str) -> Job | None: ...

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        target: str | None = None,
        batch_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        """Newest first; `before` is the cursor (the last id of the previous page)."""
        ...

    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Job]:
        """Take up to `limit` runnable jobs with a lease: one PROCESSING job whose lease
        expired (its worker died) first, then due QUEUED ones by priority and age.
        Each claim counts an attempt; the claim of an expired lease also counts a
        crash (`Job.crashes`). Leases and due times are judged by the store's clock
        (the SQL store's: the database's), never the claiming worker's."""
        ...

    async def heartbeat(
        self, worker: str, attempts: Mapping[str, int], lease_s: float
    ) -> dict[str, bool]:
        """Extend the leases `worker` still holds (job id -> the attempt it runs) and
        that have not expired: job id -> cancel requested. Jobs missing from the
        answer are no longer this worker's (finished, re-claimed, or their lease
        expired: a renewal never revives an expired lease)."""
        ...

    async def cancels_requested(self, job_ids: Collection[str]) -> set[str]:
        """Of these jobs, the ones whose cancel was requested: a read, cheap enough
        for a busy worker to ask a few times a second."""
        ...

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest queued job falls due or the earliest lease
        expires, by the store's clock (an idle worker's timer); None: neither waits."""
        ...

    async def watch(self) -> asyncio.Event:
        """A new event, set whenever a job may have become claimable: submitted,
        queued for a retry, handed back. Its waiter clears it before claiming."""
        ...

    @property
    def shared_wakeups(self) -> bool:
        """Whether `watch` events also hear other processes' changes (PostgreSQL
        LISTEN/NOTIFY); if not, a process that starts workers must wake them."""
        ...

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        lease: Lease | None = None,
        changes: JobChanges | None = None,
        deliveries_out: Sequence[NewDelivery] = (),
        batch_delta: tuple[int, int] | None = None,
        only_from: frozenset[JobStatus] | None = None,
        unless_cancelled: bool = False,
    ) -> Job | None:
        """Change the job's status, guarded by `JOB_ALLOWED_FROM` (narrowed by
        `only_from`), the lease when given, and (with `unless_cancelled`) the
        absence of a cancel request. The deliveries are written in the same atomic
        step, and so are the job's lines in its batch's counts (`batch_delta`:
        completed, failed) when it finishes. None: nothing changed."""
        ...

    async def release(self, job_id: str, lease: Lease) -> Job | None:
        """Hand a claimed job back to the queue without counting the attempt
        (a worker shutting down before it could finish)."""
        ...

    async def update_progress(
        self,
        lease: Lease,
        job_id: str,
        steps: list[dict[str, Any]],
        progress: float,
        deliveries_out: Sequence[NewDelivery] = (),
    ) -> bool:
        """Record step progress (not a status change); False if the lease was lost."""
        ...

    async def request_cancel(
        self, job_id: str, deliveries_out: Sequence[NewDelivery] = ()
    ) -> Job | None:
        """Flag the job for cancellation and cancel it at once if it is queued (the
        deliveries go with that transition). The flag stays for whoever holds or
        next claims it. None if the job does not exist."""
        ...

    async def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Delete finished jobs (not in a batch) and finished batches with their
        chunks, older than the cutoff; return the deleted jobs (for their blobs)."""
        ...


class BatchStore(Protocol):
    async def create_batch(self, batch: NewBatch, chunk_jobs: Sequence[NewJob]) -> Batch:
        """The batch, its refused lines and its chunk jobs. SQL writes them in bounded
        transactions (other writers take turns between them): the batch is CREATING,
        and its chunks cannot be claimed, until the last one is in; then it is
        PROCESSING (with no chunks, COMPLETED). A creation that fails midway is undone;
        one whose process died stays CREATING until `purge_abandoned_batches`."""
        ...

    async def create_batch_from(self, batch: NewBatch, parts: AsyncIterator[BatchPart]) -> Batch:
        """As `create_batch`, its refusals and chunks coming in `parts` as they are
        read (SQL writes each part as it comes; the batch's counts are the parts',
        `batch.total` and `batch.invalid_lines` are not used). An error raised by
        `parts` undoes the creation and propagates."""
        ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def list_batches(
        self,
        *,
        status: BatchStatus | None = None,
        target: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Batch]:
        """Newest first, never one still CREATING; `before` is the cursor (the last
        id of the previous page)."""
        ...

    async def batch_chunks(self, batch_id: str, after_index: int, limit: int) -> list[Job]:
        """Chunk jobs in order, after chunk index `after_index`."""
        ...

    async def batch_refusals(
        self, batch_id: str, after_line: int, limit: int
    ) -> list[dict[str, Any]]:
        """Lines refused at submission, by line number, after line `after_line`."""
        ...

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        """Cancel queued chunks at once and flag running ones; the batch is CANCELLED
        (finished when its last chunk ends). A batch still CREATING is left as it is.
        None if there is no such batch."""
        ...

    async def purge_abandoned_batches(self, created_before: float, limit: int = 100) -> list[Job]:
        """Delete batches still CREATING that were created before the cutoff (their
        creator died; nobody was told their id), with their chunks and refusals;
        return the deleted chunks (for their blobs)."""
        ...


class DeliveryStore(Protocol):
    async def claim_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Due PENDING deliveries nobody holds, leased to `owner`."""
        ...

    async def record_delivery(
        self,
        delivery_id: str,
        owner: str,
        attempts: list[dict[str, Any]],
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        """Record an attempt and release the lease; False if `owner` lost it meanwhile."""
        ...

    async def list_deliveries(self, job_id: str) -> list[Delivery]: ...


class RepositoryAction(StrEnum):
    """What a load or unload call did to a model, for other processes to do too."""

    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True, slots=True)
class ModelGeneration:
    """The latest repository change to one model: each change counts one generation."""

    model: str
    generation: int
    action: RepositoryAction


class RepositoryStore(Protocol):
    async def record_repository_change(self, model: str, action: RepositoryAction) -> int:
        """Count a new generation of `model` (a load or unload call took effect in
        one process); the generation it is now."""
        ...

    async def repository_generations(self) -> dict[str, ModelGeneration]:
        """Every model's latest generation (one small read: processes poll it)."""
        ...


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record: never the key itself, only its keyed hash (`digest`)."""

    id: str
    prefix: str
    """The key's visible start (`mpx_1a2b3c4d`): enough to tell keys apart in a list."""
    digest: str
    """HMAC-SHA256 of the whole key under the server's pepper, hex."""
    name: str
    owner: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None
    rate_limit: str | None
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None


class ApiKeyStore(Protocol):
    async def create_api_key(self, key: ApiKey) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKey | None: ...

    async def find_api_key(self, digest: str) -> ApiKey | None:
        """The key whose digest this is (revoked or expired ones too: the caller judges)."""
        ...

    async def list_api_keys(self) -> list[ApiKey]:
        """Every key, newest first."""
        ...

    async def count_api_keys(self) -> int:
        """Keys neither revoked nor expired (whether a server must check credentials)."""
        ...

    async def revoke_api_key(self, key_id: str, at: float) -> ApiKey | None:
        """Revoke the key (a revoked one keeps its first revocation time); None: no such key."""
        ...

    async def rotate_api_key(self, key_id: str, prefix: str, digest: str) -> ApiKey | None:
        """Give a live key a new secret: the old one stops working. None: no such
        key, or one already revoked."""
        ...

    async def touch_api_key(self, key_id: str, at: float) -> None:
        """Record a use of the key."""
        ...


class Store(JobStore, BatchStore, DeliveryStore, RepositoryStore, ApiKeyStore, Protocol):
    """Everything the job layer stores."""

    async def close(self) -> None: ...
