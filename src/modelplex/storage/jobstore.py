"""The job store: the jobs table is the queue.

Claims take a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises
writers, which makes the same statement an exclusive claim). Every status
change goes through `transition`, whose UPDATE only matches rows in a state the
table `ALLOWED_FROM` permits (and, for a worker, only while it holds the lease),
so an illegal or stale write changes nothing and returns None. Webhook
deliveries are written in the same transaction as the change that causes them
(a transactional outbox: no event is lost and none is sent for a change that
did not happen).

Database errors are translated to `StoreUnavailable` at this boundary.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelplex.errors import StoreUnavailable
from modelplex.jobs.ids import new_id
from modelplex.jobs.models import (
    ALLOWED_FROM,
    Batch,
    Delivery,
    DeliveryStatus,
    Job,
    JobKind,
    JobStatus,
    Lease,
    NewDelivery,
    NewJob,
)
from modelplex.storage.grouping import GroupCommit
from modelplex.storage.schema import batches, deliveries, jobs


class DuplicateKey(Exception):
    """An idempotency key is already taken (carries the existing job)."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


def _job(row: Any) -> Job:
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
        previous_owner=m.get("previous_owner"),
    )


def _delivery(row: Any) -> Delivery:
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


def _batch(row: Any) -> Batch:
    m = row._mapping
    return Batch(
        id=m["id"],
        kind=JobKind(m["kind"]),
        target=m["target"],
        version=m["version"],
        status=JobStatus(m["status"]),
        total=m["total"],
        completed=m["completed"],
        failed=m["failed"],
        chunks=m["chunks"],
        chunks_done=m["chunks_done"],
        invalid_lines=m["invalid_lines"] or [],
        metadata=m["batch_metadata"],
        created_at=m["created_at"],
        finished_at=m["finished_at"],
    )


def new_job_row(job: NewJob, now: float) -> dict[str, Any]:
    return {
        "id": new_id("job"),
        "kind": job.kind.value,
        "target": job.target,
        "version": job.version,
        "status": JobStatus.QUEUED.value,
        "priority": job.priority,
        "input": job.input,
        "input_ref": job.input_ref,
        "job_metadata": job.metadata,
        "callback_url": job.callback_url,
        "callback_events": job.callback_events,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "history": [],
        "steps": [{"name": s, "status": "PENDING", "progress": 0.0} for s in job.steps],
        "progress": 0.0,
        "cancel_requested": False,
        "run_at": now,
        "created_at": now,
        "updated_at": now,
        "batch_id": job.batch_id,
        "chunk_index": job.chunk_index,
    }


@dataclass(frozen=True, slots=True)
class _Transition:
    job_id: str
    sources: frozenset[JobStatus]
    lease: Lease | None
    fields: dict[str, Any]
    deliveries: tuple[NewDelivery, ...]
    batch_delta: tuple[int, int] | None
    now: float


@functools.lru_cache(maxsize=256)
def _transition_statement(sources: tuple[str, ...], leased: bool, keys: tuple[str, ...]) -> Any:
    """`UPDATE jobs SET ... WHERE id = :id AND status IN (...) [AND lease]`, built once
    per shape with bound parameters."""
    statement = update(jobs).where(jobs.c.id == bindparam("w_id"), jobs.c.status.in_(sources))
    if leased:
        statement = statement.where(
            jobs.c.lease_owner == bindparam("w_owner"), jobs.c.attempts == bindparam("w_attempt")
        )
    return statement.values({k: bindparam(f"v_{k}") for k in keys}).returning(*jobs.c)


# Built once: constructing statements per call (values as literals) cost more CPU
# than the database round trip.
_INSERT_JOB = insert(jobs).returning(*jobs.c)
_INSERT_JOBS = insert(jobs).returning(*jobs.c, sort_by_parameter_order=True)


class SqlJobStore:
    """The job store on SQLAlchemy Core (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._inserts: GroupCommit[dict[str, Any], Job] = GroupCommit(
            self._flush_inserts, "insert-jobs"
        )
        self._transitions: GroupCommit[_Transition, Job | None] = GroupCommit(
            self._flush_transitions, "job-transitions"
        )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as connection:
                yield connection
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise StoreUnavailable(f"job database error: {type(exc.orig).__name__}") from exc
        except OSError as exc:  # connection refused, network down
            raise StoreUnavailable(f"job database unreachable: {exc}") from exc

    # -- jobs ---------------------------------------------------------------
    async def create(self, job: NewJob) -> Job:
        """Insert a QUEUED job; raises DuplicateKey if its idempotency key exists.
        Concurrent creations share one multi-row INSERT (see grouping.py)."""
        return await self._inserts.submit(new_job_row(job, time.time()))

    async def _flush_inserts(self, rows: list[dict[str, Any]]) -> list[Job | BaseException]:
        try:
            async with self._tx() as conn:
                result = await conn.execute(_INSERT_JOBS, rows)
                return [_job(r) for r in result.all()]
        except IntegrityError:
            if len(rows) == 1:
                return [await self._duplicate(rows[0])]
        # A duplicate idempotency key in the group: one by one, so only its request fails.
        outcomes: list[Job | BaseException] = []
        for row in rows:
            try:
                async with self._tx() as conn:
                    outcomes.append(_job((await conn.execute(_INSERT_JOB, row)).one()))
            except IntegrityError:
                outcomes.append(await self._duplicate(row))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _duplicate(self, row: dict[str, Any]) -> BaseException:
        key = row.get("idempotency_key")
        existing = await self.get_by_key(key) if key else None
        if existing is None:
            return StoreUnavailable("the job could not be stored (constraint violation)")
        return DuplicateKey(existing)

    async def get(self, job_id: str) -> Job | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(row) if row else None

    async def get_by_key(self, key: str) -> Job | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.idempotency_key == key))).first()
        return _job(row) if row else None

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
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if target is not None:
            query = query.where(jobs.c.target == target)
        if batch_id is not None:
            query = query.where(jobs.c.batch_id == batch_id)
        if before is not None:
            query = query.where(jobs.c.id < before)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [_job(r) for r in rows]

    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Job]:
        """Take up to `limit` runnable jobs: due QUEUED ones, and PROCESSING ones
        whose lease expired (their worker died). Highest priority first."""
        now = time.time()
        runnable = or_(
            and_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_at <= now),
            and_(jobs.c.status == JobStatus.PROCESSING.value, jobs.c.lease_expires_at < now),
        )
        candidates = (
            select(jobs.c.id, jobs.c.lease_owner)
            .where(runnable)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        allowed = [s.value for s in ALLOWED_FROM[JobStatus.PROCESSING]]
        async with self._tx() as conn:
            # Locked rows (PostgreSQL) or the database write lock (SQLite) keep the
            # candidates ours between these two statements.
            previous = {r.id: r.lease_owner for r in (await conn.execute(candidates)).all()}
            if not previous:
                return []
            statement = (
                update(jobs)
                .where(jobs.c.id.in_(list(previous)), jobs.c.status.in_(allowed))
                .values(
                    status=JobStatus.PROCESSING.value,
                    lease_owner=worker,
                    lease_expires_at=now + lease_s,
                    attempts=jobs.c.attempts + 1,
                    started_at=func.coalesce(jobs.c.started_at, now),
                    updated_at=now,
                )
                .returning(*jobs.c)
            )
            rows = (await conn.execute(statement)).all()
        claimed = [_job(r) for r in rows]
        for job in claimed:
            job.previous_owner = previous.get(job.id)
        claimed.sort(key=lambda j: (-j.priority, j.run_at))
        return claimed

    async def heartbeat(
        self, worker: str, job_ids: Sequence[str], lease_s: float
    ) -> dict[str, bool]:
        """Extend the leases this worker still holds; job id -> cancel requested.
        Jobs missing from the answer are no longer this worker's."""
        if not job_ids:
            return {}
        now = time.time()
        statement = (
            update(jobs)
            .where(
                jobs.c.id.in_(list(job_ids)),
                jobs.c.lease_owner == worker,
                jobs.c.status == JobStatus.PROCESSING.value,
            )
            .values(lease_expires_at=now + lease_s)
            .returning(jobs.c.id, jobs.c.cancel_requested)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(statement)).all()
        return {r.id: bool(r.cancel_requested) for r in rows}

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        lease: Lease | None = None,
        values: dict[str, Any] | None = None,
        deliveries_out: Sequence[NewDelivery] = (),
        batch_delta: tuple[int, int] | None = None,
        only_from: frozenset[JobStatus] | None = None,
    ) -> Job | None:
        """The one way a job's status changes. None means the transition is not
        allowed from the job's current state (or the lease is no longer held).
        `only_from` narrows the allowed source states further. Concurrent
        transitions share a transaction, each still guarded on its own."""
        now = time.time()
        sources = ALLOWED_FROM[to] if only_from is None else ALLOWED_FROM[to] & only_from
        fields: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
        if to.finished:
            fields.setdefault("finished_at", now)
            fields["lease_owner"] = None
            fields["lease_expires_at"] = None
        return await self._transitions.submit(
            _Transition(job_id, sources, lease, fields, tuple(deliveries_out), batch_delta, now)
        )

    async def _flush_transitions(
        self, batch: list[_Transition]
    ) -> list[Job | BaseException | None]:
        try:
            async with self._tx() as conn:
                return [await self._apply(conn, t) for t in batch]
        except Exception:
            if len(batch) == 1:
                raise
        outcomes: list[Job | BaseException | None] = []
        for item in batch:  # isolate the failure to the transition that caused it
            try:
                async with self._tx() as conn:
                    outcomes.append(await self._apply(conn, item))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _apply(self, conn: AsyncConnection, item: _Transition) -> Job | None:
        statement = _transition_statement(
            tuple(sorted(s.value for s in item.sources)),
            item.lease is not None,
            tuple(sorted(item.fields)),
        )
        params = {f"v_{k}": v for k, v in item.fields.items()}
        params["w_id"] = item.job_id
        if item.lease is not None:
            params["w_owner"] = item.lease.worker
            params["w_attempt"] = item.lease.attempt
        row = (await conn.execute(statement, params)).first()
        if row is None:
            return None
        job = _job(row)
        await self._insert_deliveries(conn, job.id, item.deliveries, item.now)
        if item.batch_delta is not None and job.batch_id is not None:
            await self._count_chunks(conn, job.batch_id, 1, item.batch_delta, item.now)
        return job

    async def update_progress(
        self,
        lease: Lease,
        job_id: str,
        steps: list[dict[str, Any]],
        progress: float,
        deliveries_out: Sequence[NewDelivery] = (),
    ) -> bool:
        """Record step progress; False if the lease was lost."""
        now = time.time()
        statement = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.PROCESSING.value,
                jobs.c.lease_owner == lease.worker,
                jobs.c.attempts == lease.attempt,
            )
            .values(steps=steps, progress=progress, updated_at=now)
        )
        async with self._tx() as conn:
            result = await conn.execute(statement)
            if result.rowcount != 1:
                return False
            await self._insert_deliveries(conn, job_id, deliveries_out, now)
        return True

    async def request_cancel(
        self, job_id: str, deliveries_out: Sequence[NewDelivery] = ()
    ) -> Job | None:
        """Cancel a QUEUED job at once; flag a PROCESSING one for its worker to stop."""
        cancelled = await self.transition(
            job_id,
            JobStatus.CANCELLED,
            values={"error": {"code": "CANCELLED", "message": "cancelled by request"}},
            deliveries_out=deliveries_out,
            batch_delta=(0, 0),
            only_from=frozenset({JobStatus.QUEUED}),
        )
        if cancelled is not None:
            return cancelled
        async with self._tx() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=time.time())
            )
        return await self.get(job_id)

    async def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Delete finished jobs (not in a batch) and finished batches older than the cutoff.
        Returns the deleted jobs so their blobs can be removed too."""
        async with self._tx() as conn:
            old = (
                await conn.execute(
                    select(jobs)
                    .where(jobs.c.finished_at < finished_before, jobs.c.batch_id.is_(None))
                    .limit(limit)
                )
            ).all()
            removed = [_job(r) for r in old]
            if removed:
                await conn.execute(delete(jobs).where(jobs.c.id.in_([j.id for j in removed])))
            old_batches = (
                (
                    await conn.execute(
                        select(batches.c.id)
                        .where(batches.c.finished_at < finished_before)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if old_batches:
                chunk_rows = (
                    await conn.execute(select(jobs).where(jobs.c.batch_id.in_(old_batches)))
                ).all()
                removed += [_job(r) for r in chunk_rows]
                await conn.execute(delete(jobs).where(jobs.c.batch_id.in_(old_batches)))
                await conn.execute(delete(batches).where(batches.c.id.in_(old_batches)))
        return removed

    # -- webhook deliveries -------------------------------------------------
    @staticmethod
    async def _insert_deliveries(
        conn: AsyncConnection, job_id: str, items: Sequence[NewDelivery], now: float
    ) -> None:
        if not items:
            return
        await conn.execute(
            insert(deliveries),
            [
                {
                    "id": new_id("msg"),
                    "job_id": job_id,
                    "event": d.event,
                    "url": d.url,
                    "payload": d.payload,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": [],
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for d in items
            ],
        )

    async def claim_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        candidates = (
            select(deliveries.c.id)
            .where(
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.next_attempt_at <= now,
                or_(deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at < now),
            )
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._tx() as conn:
            due = list((await conn.execute(candidates)).scalars().all())
            if not due:
                return []
            statement = (
                update(deliveries)
                .where(deliveries.c.id.in_(due))
                .values(lease_owner=owner, lease_expires_at=now + lease_s)
                .returning(*deliveries.c)
            )
            rows = (await conn.execute(statement)).all()
        return [_delivery(r) for r in rows]

    async def record_delivery(
        self,
        delivery_id: str,
        owner: str,
        attempts: list[dict[str, Any]],
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        statement = (
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.lease_owner == owner)
            .values(
                attempts=attempts,
                status=status.value,
                next_attempt_at=next_attempt_at,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        async with self._tx() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def list_deliveries(self, job_id: str) -> list[Delivery]:
        query = (
            select(deliveries)
            .where(deliveries.c.job_id == job_id)
            .order_by(deliveries.c.created_at, deliveries.c.id)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [_delivery(r) for r in rows]

    # -- batches ------------------------------------------------------------
    async def create_batch(self, batch: dict[str, Any], chunk_jobs: Sequence[NewJob]) -> Batch:
        now = time.time()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    insert(batches).values(**batch, created_at=now).returning(*batches.c)
                )
            ).one()
            for start in range(0, len(chunk_jobs), 500):
                await conn.execute(
                    insert(jobs), [new_job_row(j, now) for j in chunk_jobs[start : start + 500]]
                )
        return _batch(row)

    async def get_batch(self, batch_id: str) -> Batch | None:
        async with self._tx() as conn:
            return await self._get_batch(conn, batch_id)

    async def batch_chunks(self, batch_id: str, after_index: int, limit: int) -> list[Job]:
        query = (
            select(jobs)
            .where(jobs.c.batch_id == batch_id, jobs.c.chunk_index > after_index)
            .order_by(jobs.c.chunk_index)
            .limit(limit)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [_job(r) for r in rows]

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        """Cancel a batch: queued chunks at once (one guarded UPDATE), running chunks
        at their next check. The batch ends CANCELLED when its last chunk ends."""
        now = time.time()
        # Only the queued subset of ALLOWED_FROM[CANCELLED]: running chunks stop themselves.
        queued = [s.value for s in ALLOWED_FROM[JobStatus.CANCELLED] if s is JobStatus.QUEUED]
        async with self._tx() as conn:
            found = (
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id, batches.c.finished_at.is_(None))
                    .values(status=JobStatus.CANCELLED.value)
                    .returning(batches.c.id)
                )
            ).first()
            if found is None:
                return await self._get_batch(conn, batch_id)
            cancelled = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.batch_id == batch_id, jobs.c.status.in_(queued))
                    .values(
                        status=JobStatus.CANCELLED.value,
                        finished_at=now,
                        updated_at=now,
                        error={"code": "CANCELLED", "message": "batch cancelled"},
                    )
                )
            ).rowcount
            await conn.execute(
                update(jobs)
                .where(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=now)
            )
            await self._count_chunks(conn, batch_id, cancelled, (0, 0), now)
            return await self._get_batch(conn, batch_id)

    @staticmethod
    async def _get_batch(conn: AsyncConnection, batch_id: str) -> Batch | None:
        row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
        return _batch(row) if row else None

    @staticmethod
    async def _count_chunks(
        conn: AsyncConnection, batch_id: str, chunks: int, lines: tuple[int, int], now: float
    ) -> None:
        """Chunks finished: add their lines to the batch's counts, in their transaction."""
        completed, failed = lines
        await conn.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(
                completed=batches.c.completed + completed,
                failed=batches.c.failed + failed,
                chunks_done=batches.c.chunks_done + chunks,
            )
        )
        await conn.execute(
            update(batches)
            .where(
                batches.c.id == batch_id,
                batches.c.chunks_done >= batches.c.chunks,
                batches.c.finished_at.is_(None),
            )
            .values(
                finished_at=now,
                status=case(
                    (batches.c.status == JobStatus.CANCELLED.value, JobStatus.CANCELLED.value),
                    else_=JobStatus.COMPLETED.value,
                ),
            )
        )
