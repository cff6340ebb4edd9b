"""The `Store` in one process's memory: for unit tests and single-process use.

Nothing survives the process. It keeps the SQL store's contract (`storage/sql`
defines the semantics; `tests/storage/test_contract.py` runs one suite over both).
No method awaits in the middle of its work, so each is one atomic step on the
event loop, as a transaction is in SQL. Records go in and out as deep copies: a
caller mutating what it passed or got back cannot reach into the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from modelplex.ids import new_id
from modelplex.records import (
    BATCH_ALLOWED_FROM,
    CANCELLED_BY_REQUEST,
    CHANGEABLE,
    JOB_ALLOWED_FROM,
    Batch,
    BatchStatus,
    Clock,
    Job,
    JobChanges,
    JobStatus,
    Lease,
    NewBatch,
    NewDelivery,
    NewJob,
    allowed_sources,
    batch_outcome,
    pending_steps,
)
from modelplex.storage.interface import ApiKey, BatchPart, DuplicateKey, ModelGeneration, Store
from modelplex.storage.memory_api_keys import MemoryApiKeys
from modelplex.storage.memory_batches import BatchReads, Lines
from modelplex.storage.memory_outbox import MemoryOutbox, OutboxEntry
from modelplex.storage.memory_repository import MemoryRepositoryLog

_QUEUED_ONLY = frozenset({JobStatus.QUEUED})
_Table = dict[Any, frozenset[Any]]
_Out = Sequence[NewDelivery]
_Delta = tuple[int, int] | None


class _HasStatus(Protocol):
    status: Any


def _move(
    record: _HasStatus, to: StrEnum, table: _Table, only_from: frozenset[Any] | None = None
) -> bool:
    """The one status writer (the SQL store's `status_update`): set `record.status` to
    `to` only if the state machine's table allows it from the current status."""
    if record.status.value not in allowed_sources(table, to, only_from):
        return False
    record.status = to
    return True


def _before(at: float | None, cutoff: float) -> bool:
    return at is not None and at < cutoff


def _new_job(job: NewJob, now: float, batch_id: str | None = None, index: int | None = None) -> Job:
    return Job(
        id=new_id("job"), kind=job.kind, target=job.target, version=job.version,
        status=JobStatus.QUEUED, priority=job.priority, input=deepcopy(job.input),
        input_ref=job.input_ref, upload_ref=job.upload_ref, result=None, result_ref=None,
        error=None, metadata=deepcopy(job.metadata), callback_url=job.callback_url,
        callback_events=list(job.callback_events), idempotency_key=job.idempotency_key,
        request_hash=job.request_hash, attempts=0, max_attempts=job.max_attempts, history=[],
        steps=pending_steps(job.steps),
        progress=0.0, cancel_requested=False, lease_owner=None, lease_expires_at=None,
        run_at=now, created_at=now, started_at=None, finished_at=None, updated_at=now,
        batch_id=batch_id, chunk_index=index,
    )  # fmt: skip


def _holds(job: Job, lease: Lease | None) -> bool:
    return lease is None or (job.lease_owner == lease.worker and job.attempts == lease.attempt)


class MemoryStore(BatchReads, MemoryOutbox, MemoryRepositoryLog, MemoryApiKeys):
    """The `Store` on dicts, one per process."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, str] = {}  # idempotency key -> job id
        self._batches: dict[str, Batch] = {}
        self._chunks: dict[str, list[str]] = {}  # batch id -> chunk job ids, by chunk index
        self._refusals: dict[str, Lines] = {}  # batch id -> lines refused, by line number
        self._outbox: dict[str, OutboxEntry] = {}
        self._watchers: list[asyncio.Event] = []
        self._generations: dict[str, ModelGeneration] = {}
        self._api_keys: dict[str, ApiKey] = {}

    @property
    def shared_wakeups(self) -> bool:
        return False  # one process's store: nobody else can change it

    async def watch(self) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.append(event)
        return event

    def _wake(self) -> None:
        for event in self._watchers:
            event.set()

    async def next_due_in(self) -> float | None:
        now = self._clock()
        times = [j.run_at for j in self._jobs.values() if j.status is JobStatus.QUEUED]
        times += [
            j.lease_expires_at
            for j in self._jobs.values()
            if j.status is JobStatus.PROCESSING and j.lease_expires_at is not None
        ]
        return max(0.0, min(times) - now) if times else None

    async def close(self) -> None:
        """Nothing to release: the store goes with the process."""

    async def create(self, job: NewJob) -> Job:
        self._check_keys([job])
        record = _new_job(job, self._clock())
        self._insert(record)
        self._wake()
        return deepcopy(record)

    def _check_keys(self, new: Iterable[NewJob]) -> None:
        """Refuse before inserting anything, so a refused call leaves no trace."""
        keys = [j.idempotency_key for j in new if j.idempotency_key is not None]
        for key in keys:
            if key in self._keys:
                raise DuplicateKey(deepcopy(self._jobs[self._keys[key]]))
        if len(set(keys)) < len(keys):  # SQL's unique index refuses this too
            raise ValueError("an idempotency key is given twice in one call")

    def _insert(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key is not None:
            self._keys[job.idempotency_key] = job.id

    def _by_id(self) -> list[Job]:
        # Ids sort by creation (`modelplex.ids`): this is the order of the SQL id index.
        return sorted(self._jobs.values(), key=lambda j: j.id)

    async def get(self, job_id: str) -> Job | None:
        return deepcopy(self._jobs.get(job_id))

    async def get_by_key(self, key: str) -> Job | None:
        job_id = self._keys.get(key)
        return deepcopy(self._jobs[job_id]) if job_id is not None else None

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        target: str | None = None,
        batch_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        found = [
            j
            for j in reversed(self._by_id())
            if (status is None or j.status is status)
            and (target is None or j.target == target)
            and (batch_id is None or j.batch_id == batch_id)
            and (before is None or j.id < before)
        ]
        return [deepcopy(j) for j in found[:limit]]

    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Job]:
        now = self._clock()
        jobs = self._by_id()
        lost = [
            j for j in jobs if j.status is JobStatus.PROCESSING and _before(j.lease_expires_at, now)
        ][: min(limit, 1)]  # one per claim, as in SQL
        lost_owners = {j.id: j.lease_owner for j in lost}
        due = [j for j in jobs if j.status is JobStatus.QUEUED and j.run_at <= now]
        due.sort(key=lambda j: (-j.priority, j.run_at))  # stable: ties stay in id order
        claimed: list[Job] = []
        for job in lost + due[: limit - len(lost)]:
            if not _move(job, JobStatus.PROCESSING, JOB_ALLOWED_FROM):
                continue
            if job.id in lost_owners:  # its worker was lost: a crash, not its own failure
                job.crashes += 1
            job.lease_owner, job.lease_expires_at = worker, now + lease_s
            job.attempts += 1
            job.started_at = now if job.started_at is None else job.started_at
            job.updated_at = now
            out = deepcopy(job)
            out.previous_owner = lost_owners.get(job.id)  # on the answer only, never stored
            claimed.append(out)
        claimed.sort(key=lambda j: (-j.priority, j.run_at))
        return claimed

    async def heartbeat(
        self, worker: str, attempts: Mapping[str, int], lease_s: float
    ) -> dict[str, bool]:
        now = self._clock()
        held: dict[str, bool] = {}
        for job_id in sorted(attempts):
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.PROCESSING:
                continue
            if not _holds(job, Lease(worker, attempts[job_id])):
                continue
            # Expired is expired, even if nobody claimed it yet: as in SQL.
            if job.lease_expires_at is None or job.lease_expires_at < now:
                continue
            job.lease_expires_at = now + lease_s
            held[job_id] = job.cancel_requested
        return held

    async def cancels_requested(self, job_ids: Collection[str]) -> set[str]:
        return {i for i in job_ids if (job := self._jobs.get(i)) and job.cancel_requested}

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
        fields: dict[str, Any] = dict(changes or {})
        if not fields.keys() <= CHANGEABLE:  # a caller's typo or a smuggled status
            raise ValueError(f"a transition cannot change {sorted(set(fields) - CHANGEABLE)}")
        job = self._jobs.get(job_id)
        if job is None or not _holds(job, lease) or (unless_cancelled and job.cancel_requested):
            return None
        if not _move(job, to, JOB_ALLOWED_FROM, only_from):
            return None
        now = self._clock()
        if "run_after_s" in fields:
            fields["run_at"] = now + fields.pop("run_after_s")
        self._changed(job, fields, now, deliveries_out, batch_delta)
        if to is JobStatus.QUEUED:
            self._wake()
        return deepcopy(job)

    def _changed(
        self, job: Job, fields: dict[str, Any], now: float, out: _Out = (), delta: _Delta = None
    ) -> None:
        """What goes with a status change that happened, in the same step."""
        for name, value in fields.items():
            setattr(job, name, deepcopy(value))
        job.updated_at = now
        if job.status.finished:
            job.finished_at = now
        if job.status is not JobStatus.PROCESSING:  # nobody holds a queued or finished job
            job.lease_owner = None
            job.lease_expires_at = None
        self._write_outbox(job.id, out, now)
        if delta is not None and job.batch_id is not None and job.status.finished:
            self._count_chunks(job.batch_id, 1, delta, now)

    async def release(self, job_id: str, lease: Lease) -> Job | None:
        now = self._clock()
        job = self._jobs.get(job_id)
        if job is None or not _holds(job, lease):
            return None
        if not _move(job, JobStatus.QUEUED, JOB_ALLOWED_FROM):
            return None
        job.attempts -= 1  # the attempt never ran to an outcome: it does not count
        steps = pending_steps([step["name"] for step in job.steps])  # it runs from the start
        self._changed(job, {"run_at": now, "steps": steps, "progress": 0.0}, now)
        self._wake()
        return deepcopy(job)

    async def update_progress(
        self,
        lease: Lease,
        job_id: str,
        steps: list[dict[str, Any]],
        progress: float,
        deliveries_out: Sequence[NewDelivery] = (),
    ) -> bool:
        now = self._clock()
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.PROCESSING or not _holds(job, lease):
            return False
        job.steps, job.progress, job.updated_at = deepcopy(steps), progress, now
        self._write_outbox(job.id, deliveries_out, now)
        return True

    async def request_cancel(
        self, job_id: str, deliveries_out: Sequence[NewDelivery] = ()
    ) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if not job.status.finished:
            now = self._clock()
            job.cancel_requested, job.updated_at = True, now
            # Only a queued job is cancelled here; a running one keeps the flag, for its worker.
            if _move(job, JobStatus.CANCELLED, JOB_ALLOWED_FROM, _QUEUED_ONLY):
                self._changed(job, {"error": CANCELLED_BY_REQUEST}, now, deliveries_out, (0, 0))
        return deepcopy(job)

    async def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        jobs = self._by_id()
        removed = [
            j for j in jobs if j.batch_id is None and _before(j.finished_at, finished_before)
        ][:limit]
        batches = sorted(
            b.id for b in self._batches.values() if _before(b.finished_at, finished_before)
        )
        for batch_id in batches[:limit]:
            removed += [self._jobs[i] for i in self._chunks.pop(batch_id)]
            del self._batches[batch_id]
            self._refusals.pop(batch_id, None)
        gone = {j.id for j in removed}
        self._jobs = {i: j for i, j in self._jobs.items() if i not in gone}
        self._keys = {k: i for k, i in self._keys.items() if i not in gone}
        # A job's deliveries go with it (the SQL foreign key cascades).
        self._outbox = {k: o for k, o in self._outbox.items() if o.delivery.job_id not in gone}
        return removed  # no longer the store's: no copy needed

    async def create_batch(self, batch: NewBatch, chunk_jobs: Sequence[NewJob]) -> Batch:
        self._check_keys(chunk_jobs)
        now = self._clock()
        chunks, refused = len(chunk_jobs), len(batch.invalid_lines)
        record = Batch(
            id=new_id("batch"), kind=batch.kind, target=batch.target, version=batch.version,
            status=BatchStatus.PROCESSING, total=batch.total, completed=0, failed=refused,
            chunks=chunks, chunks_done=0, refused=refused, metadata=deepcopy(batch.metadata),
            created_at=now, finished_at=None,
        )  # fmt: skip
        self._batches[record.id] = record
        self._refusals[record.id] = sorted(deepcopy(batch.invalid_lines), key=lambda r: r["line"])
        members = [_new_job(j, now, record.id, i) for i, j in enumerate(chunk_jobs)]
        for job in members:
            self._insert(job)
        self._chunks[record.id] = [j.id for j in members]
        self._count_chunks(record.id, 0, (0, 0), now)  # one step: never CREATING; no chunks: done
        if members:
            self._wake()
        return deepcopy(record)

    async def create_batch_from(self, batch: NewBatch, parts: AsyncIterator[BatchPart]) -> Batch:
        refused: Lines = []
        chunk_jobs: list[NewJob] = []
        valid = 0
        async for part in parts:  # one atomic step at the end, as every call here is
            refused += part.refused
            chunk_jobs += part.chunks
            valid += part.lines
        whole = replace(batch, total=valid + len(refused), invalid_lines=refused)
        return await self.create_batch(whole, chunk_jobs)

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        batch = self._batches.get(batch_id)
        if batch is None:
            return None
        now = self._clock()
        cancelled = 0
        for job in [self._jobs[i] for i in self._chunks[batch_id]]:
            if _move(job, JobStatus.CANCELLED, JOB_ALLOWED_FROM, _QUEUED_ONLY):
                self._changed(job, {"error": CANCELLED_BY_REQUEST}, now)  # counted below, at once
                cancelled += 1
            elif job.status is JobStatus.PROCESSING:  # its worker stops at its next check
                job.cancel_requested, job.updated_at = True, now
        _move(batch, BatchStatus.CANCELLED, BATCH_ALLOWED_FROM)
        self._count_chunks(batch_id, cancelled, (0, 0), now)
        return deepcopy(batch)

    def _count_chunks(self, batch_id: str, chunks: int, lines: tuple[int, int], now: float) -> None:
        """Chunks finished: add their lines to the batch's counts. When the last chunk is
        done the batch is finished: COMPLETED, PARTIALLY_FAILED or FAILED by its lines,
        unless it was cancelled (it stays so)."""
        batch = self._batches[batch_id]  # a chunk's batch goes only with the chunk (purge)
        batch.completed += lines[0]
        batch.failed += lines[1]
        batch.chunks_done += chunks
        if batch.chunks_done >= batch.chunks:
            _move(batch, batch_outcome(batch.completed, batch.total), BATCH_ALLOWED_FROM)
            if batch.finished_at is None:
                batch.finished_at = now


if TYPE_CHECKING:
    _conforms: type[Store] = MemoryStore  # mypy proves MemoryStore keeps the whole protocol
