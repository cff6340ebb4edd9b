"""The job store: the jobs table is the queue.

Claims take a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises
writers, which makes the same statements an exclusive claim). Every status
change goes through `transition`, whose UPDATE only matches rows in a state the
table `ALLOWED_FROM` permits (and, for a worker, only while it holds the lease),
so an illegal or stale write changes nothing and returns None. `claim` and
`BatchQueries.cancel_batch` are the set-based forms of the same transitions,
guarded by the same table. Webhook deliveries are written in the transaction of
the change that causes them (a transactional outbox: no event is lost, and none
is sent for a change that did not happen).

Concurrent inserts and transitions share transactions (see grouping.py). Within
a transaction rows are locked in one order, jobs by id and then batches, so
concurrent groups cannot deadlock.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, false, func, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.errors import StoreUnavailable
from modelplex.jobs.models import (
    ALLOWED_FROM,
    CANCELLED_BY_REQUEST,
    Job,
    JobStatus,
    Lease,
    NewDelivery,
    NewJob,
)
from modelplex.storage.batchstore import BatchQueries
from modelplex.storage.database import Engines
from modelplex.storage.deliverystore import DeliveryQueries
from modelplex.storage.grouping import GroupCommit
from modelplex.storage.rows import job_from_row, new_job_row
from modelplex.storage.schema import batches, jobs

# Errors that belong to one write of a group, not to the database as a whole.
_ITEM_ERRORS = (IntegrityError, DataError)


class DuplicateKey(Exception):
    """An idempotency key is already taken (carries the existing job)."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


@dataclass(frozen=True, slots=True)
class _Transition:
    job_id: str
    sources: tuple[str, ...]
    lease: Lease | None
    fields: dict[str, Any]
    deliveries: tuple[NewDelivery, ...]
    batch_delta: tuple[int, int] | None
    unless_cancelled: bool
    now: float


@functools.lru_cache(maxsize=256)
def _transition_statement(
    sources: tuple[str, ...], leased: bool, unless_cancelled: bool, keys: tuple[str, ...]
) -> Any:
    """`UPDATE jobs SET ... WHERE id = :id AND status IN (...) [AND lease]`, built
    once per shape with bound parameters (building it per call cost more CPU than
    the round trip)."""
    statement = update(jobs).where(jobs.c.id == bindparam("w_id"), jobs.c.status.in_(sources))
    if leased:
        statement = statement.where(
            jobs.c.lease_owner == bindparam("w_owner"), jobs.c.attempts == bindparam("w_attempt")
        )
    if unless_cancelled:
        statement = statement.where(jobs.c.cancel_requested == false())
    return statement.values({k: bindparam(f"v_{k}") for k in keys}).returning(*jobs.c)


_INSERT_JOB = insert(jobs).returning(*jobs.c)
_INSERT_JOBS = insert(jobs).returning(*jobs.c, sort_by_parameter_order=True)


class SqlJobStore(BatchQueries, DeliveryQueries):
    """The job store on SQLAlchemy Core (SQLite or PostgreSQL)."""

    def __init__(self, engines: Engines) -> None:
        super().__init__(engines)
        # One writer at a time on SQLite (it has only one); a few on PostgreSQL.
        writers = 1 if engines.write.dialect.name == "sqlite" else 4
        self._inserts: GroupCommit[dict[str, Any], Job] = GroupCommit(
            self._flush_inserts, "insert-jobs", writers
        )
        self._transitions: GroupCommit[_Transition, Job | None] = GroupCommit(
            self._flush_transitions, "job-transitions", writers
        )

    # -- creating and reading -----------------------------------------------
    async def create(self, job: NewJob) -> Job:
        """Insert a QUEUED job; raises DuplicateKey if its idempotency key exists.
        Concurrent creations share one multi-row INSERT."""
        return await self._inserts.submit(new_job_row(job, time.time()))

    async def _flush_inserts(self, rows: list[dict[str, Any]]) -> list[Job | BaseException]:
        try:
            async with self._tx() as conn:
                result = await conn.execute(_INSERT_JOBS, rows)
                return [job_from_row(r) for r in result.all()]
        except _ITEM_ERRORS:
            if len(rows) == 1:
                return [await self._duplicate(rows[0])]
        # One row broke the group (a duplicate key): one by one, so only it fails.
        outcomes: list[Job | BaseException] = []
        for row in rows:
            try:
                async with self._tx() as conn:
                    outcomes.append(job_from_row((await conn.execute(_INSERT_JOB, row)).one()))
            except _ITEM_ERRORS:
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
        async with self._read() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return job_from_row(row) if row else None

    async def get_by_key(self, key: str) -> Job | None:
        async with self._read() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.idempotency_key == key))).first()
        return job_from_row(row) if row else None

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
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [job_from_row(r) for r in rows]

    # -- the queue -----------------------------------------------------------
    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Job]:
        """Take up to `limit` runnable jobs: PROCESSING ones whose lease expired
        (their worker died), then due QUEUED ones, highest priority first."""
        now = time.time()
        # Two index scans rather than one OR: with an OR the planner sorts every
        # runnable row to find the first few, and the queue can hold millions.
        lost = (
            select(jobs.c.id, jobs.c.lease_owner)
            .where(jobs.c.status == JobStatus.PROCESSING.value, jobs.c.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        queued = (
            select(jobs.c.id)
            .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_at <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at)
            .with_for_update(skip_locked=True)
        )
        allowed = [s.value for s in ALLOWED_FROM[JobStatus.PROCESSING]]
        async with self._tx() as conn:
            # Locked rows (PostgreSQL) or the write lock (SQLite) keep the
            # candidates ours until the UPDATE below.
            lost_owners = {r.id: r.lease_owner for r in (await conn.execute(lost)).all()}
            ids = list(lost_owners)
            if len(ids) < limit:
                ids += (await conn.execute(queued.limit(limit - len(ids)))).scalars().all()
            if not ids:
                return []
            statement = (
                update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.status.in_(allowed))
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
        claimed = [job_from_row(r) for r in rows]
        for job in claimed:
            job.previous_owner = lost_owners.get(job.id)
        claimed.sort(key=lambda j: (-j.priority, j.run_at))
        return claimed

    async def heartbeat(
        self, worker: str, job_ids: Sequence[str], lease_s: float
    ) -> dict[str, bool]:
        """Extend the leases this worker still holds; job id -> cancel requested.
        Jobs missing from the answer are no longer this worker's."""
        if not job_ids:
            return {}
        statement = (
            update(jobs)
            .where(
                jobs.c.id.in_(sorted(job_ids)),
                jobs.c.lease_owner == worker,
                jobs.c.status == JobStatus.PROCESSING.value,
            )
            .values(lease_expires_at=time.time() + lease_s)
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
        unless_cancelled: bool = False,
    ) -> Job | None:
        """The one way a job's status changes. None means the transition is not
        allowed from the job's current state, the lease is no longer held, or
        (with `unless_cancelled`) a cancel was requested. `only_from` narrows the
        allowed source states further. Concurrent transitions share a
        transaction, each still guarded on its own."""
        now = time.time()
        sources = ALLOWED_FROM[to] if only_from is None else ALLOWED_FROM[to] & only_from
        fields: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
        if to.finished:
            fields.setdefault("finished_at", now)
        if to is not JobStatus.PROCESSING:  # nobody holds a queued or finished job
            fields["lease_owner"] = None
            fields["lease_expires_at"] = None
        return await self._transitions.submit(
            _Transition(
                job_id,
                tuple(sorted(s.value for s in sources)),
                lease,
                fields,
                tuple(deliveries_out),
                batch_delta,
                unless_cancelled,
                now,
            )
        )

    async def _flush_transitions(
        self, group: list[_Transition]
    ) -> list[Job | BaseException | None]:
        try:
            async with self._tx() as conn:
                return await self._apply_all(conn, group)
        except _ITEM_ERRORS:
            if len(group) == 1:
                raise
        outcomes: list[Job | BaseException | None] = []
        for item in group:  # one write broke the group: isolate it
            try:
                async with self._tx() as conn:
                    outcomes += await self._apply_all(conn, [item])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _apply_all(
        self, conn: AsyncConnection, group: list[_Transition]
    ) -> list[Job | BaseException | None]:
        results: dict[int, Job | None] = {}
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        # Jobs in id order, batches last: every transaction locks in the same order.
        for index in sorted(range(len(group)), key=lambda i: group[i].job_id):
            item = group[index]
            statement = _transition_statement(
                item.sources, item.lease is not None, item.unless_cancelled,
                tuple(sorted(item.fields)),
            )  # fmt: skip
            params = {f"v_{k}": v for k, v in item.fields.items()}
            params["w_id"] = item.job_id
            if item.lease is not None:
                params["w_owner"] = item.lease.worker
                params["w_attempt"] = item.lease.attempt
            row = (await conn.execute(statement, params)).first()
            job = job_from_row(row) if row is not None else None
            results[index] = job
            if job is None:
                continue
            await self._insert_deliveries(conn, job.id, item.deliveries, item.now)
            if item.batch_delta is not None and job.batch_id is not None:
                tally = counts[job.batch_id]
                tally[0] += 1
                tally[1] += item.batch_delta[0]
                tally[2] += item.batch_delta[1]
        now = time.time()
        for batch_id in sorted(counts):
            chunks, completed, failed = counts[batch_id]
            await self._count_chunks(conn, batch_id, chunks, (completed, failed), now)
        return [results[i] for i in range(len(group))]

    async def update_progress(
        self,
        lease: Lease,
        job_id: str,
        steps: list[dict[str, Any]],
        progress: float,
        deliveries_out: Sequence[NewDelivery] = (),
    ) -> bool:
        """Record step progress (not a status change); False if the lease was lost."""
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
        """Flag the job, then cancel it at once if it is queued. The flag stays for
        whoever holds or next claims it: a running job stops at its next check, and
        a job about to be retried is cancelled instead (see `unless_cancelled`)."""
        async with self._tx() as conn:
            flagged = await conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]),
                )
                .values(cancel_requested=True, updated_at=time.time())
            )
        if flagged.rowcount == 1:
            await self.transition(
                job_id,
                JobStatus.CANCELLED,
                values={"error": CANCELLED_BY_REQUEST},
                deliveries_out=deliveries_out,
                batch_delta=(0, 0),
                only_from=frozenset({JobStatus.QUEUED}),
            )
        return await self.get(job_id)

    async def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Delete finished jobs (not in a batch) and finished batches older than the
        cutoff. Returns the deleted jobs so their blobs can be removed too."""
        async with self._tx() as conn:
            old = (
                await conn.execute(
                    select(jobs)
                    .where(jobs.c.finished_at < finished_before, jobs.c.batch_id.is_(None))
                    .limit(limit)
                )
            ).all()
            removed = [job_from_row(r) for r in old]
            if removed:
                await conn.execute(delete(jobs).where(jobs.c.id.in_([j.id for j in removed])))
            query = select(batches.c.id).where(batches.c.finished_at < finished_before).limit(limit)
            old_batches = list((await conn.execute(query)).scalars().all())
            if old_batches:
                chunk_rows = (
                    await conn.execute(select(jobs).where(jobs.c.batch_id.in_(old_batches)))
                ).all()
                removed += [job_from_row(r) for r in chunk_rows]
                await conn.execute(delete(jobs).where(jobs.c.batch_id.in_(old_batches)))
                await conn.execute(delete(batches).where(batches.c.id.in_(old_batches)))
        return removed
