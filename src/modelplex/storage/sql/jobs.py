"""The job store on SQL (SQLite or PostgreSQL): the jobs table is the queue.

Claims take a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises
writers, which makes the same statements an exclusive claim). Every status
change is one guarded update (`guarded.status_update`): `transition` (see
`transitions.py`), `claim`, `release` and `cancel_batch` all build theirs
there, from the state machine's table, so an illegal or stale write changes
nothing and returns None. Concurrent inserts share a multi-row INSERT.

Every lease decision (a claim, an expiry, a renewal) and every due time is
judged by the database's clock (`SqlBase._now`), so workers on hosts whose
clocks disagree by more than a lease still agree on who holds a job. A claim of
a job whose lease expired counts a crash, not one of the job's attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import case, delete, func, insert, select, tuple_, update

from modelplex.errors import StoreUnavailable
from modelplex.records import (
    CANCELLED_BY_REQUEST,
    JOB_ALLOWED_FROM,
    Batch,
    Clock,
    Job,
    JobStatus,
    Lease,
    NewBatch,
    NewDelivery,
    NewJob,
)
from modelplex.storage.grouping import GroupCommit
from modelplex.storage.interface import BatchPart, DuplicateKey
from modelplex.storage.sql.api_keys import ApiKeyQueries
from modelplex.storage.sql.base import now_sql
from modelplex.storage.sql.engines import Engines, create_engines, migrate
from modelplex.storage.sql.guarded import status_update
from modelplex.storage.sql.repository import RepositoryQueries
from modelplex.storage.sql.rows import job_from_row, new_job_row
from modelplex.storage.sql.schema import batches, jobs
from modelplex.storage.sql.transitions import ITEM_ERRORS, TransitionQueries

_STAMPS = ("created_at", "run_at", "updated_at")
_PROCESSING = JobStatus.PROCESSING.value
_QUEUED_ONLY = frozenset({JobStatus.QUEUED})
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.PROCESSING.value)


class SqlStore(TransitionQueries, RepositoryQueries, ApiKeyQueries):
    """The `Store` on SQLAlchemy Core."""

    def __init__(self, engines: Engines, clock: Clock | None = None) -> None:
        """`clock`: None (production) reads the database's; see `SqlBase`."""
        # One writer at a time on SQLite (it has only one); a few on PostgreSQL.
        writers = 1 if engines.write.dialect.name == "sqlite" else 4
        super().__init__(engines, clock, writers)
        self._inserts: GroupCommit[dict[str, Any], Job] = GroupCommit(
            self._flush_inserts, "insert-jobs", writers
        )
        # New jobs are stamped (and so fall due) by the database's clock (an
        # injected one's stamps go in the rows, see `_stamped`).
        stamps = {} if clock is not None else {name: now_sql(self._clock_kind) for name in _STAMPS}
        self._insert_one = insert(jobs).values(stamps).returning(*jobs.c)
        self._insert_many = (
            insert(jobs).values(stamps).returning(*jobs.c, sort_by_parameter_order=True)
        )

    @classmethod
    def connect(
        cls, url: str, clock: Clock | None = None, *, command_timeout_s: float = 30.0
    ) -> SqlStore:
        """A store on the database at `url` (connections open on first use)."""
        return cls(create_engines(url, command_timeout_s=command_timeout_s), clock)

    @property
    def shared_wakeups(self) -> bool:
        return self._wakeups.shared

    async def watch(self) -> asyncio.Event:
        return self._wakeups.subscribe()

    async def migrate(self) -> None:
        """Bring the schema up to date (safe from many processes at once)."""
        await migrate(self.engines.write)

    # -- creating and reading -----------------------------------------------
    async def create(self, job: NewJob) -> Job:
        """Insert a QUEUED job; raises DuplicateKey if its idempotency key exists.
        Concurrent creations share one multi-row INSERT."""
        row = new_job_row(job, 0.0)
        for name in _STAMPS:
            del row[name]
        created = await self._inserts.submit(row)
        self._wakeups.signal()
        return created

    async def create_batch_from(self, batch: NewBatch, parts: AsyncIterator[BatchPart]) -> Batch:
        created = await super().create_batch_from(batch, parts)
        if created.chunks:
            async with self._tx() as conn:
                await self._wakeups.notify(conn)
            self._wakeups.signal()
        return created

    async def _flush_inserts(self, rows: list[dict[str, Any]]) -> list[Job | BaseException]:
        stamped = rows
        if self._injected is not None:
            now = self._injected()
            stamped = [row | dict.fromkeys(_STAMPS, now) for row in rows]
        try:
            async with self._tx() as conn:
                result = await conn.execute(self._insert_many, stamped)
                await self._wakeups.notify(conn)
                return [job_from_row(r) for r in result.all()]
        except ITEM_ERRORS:
            if len(rows) == 1:
                return [await self._duplicate(rows[0])]
        # One row broke the group (a duplicate key): one by one, so only it fails.
        outcomes: list[Job | BaseException] = []
        for row in stamped:
            try:
                async with self._tx() as conn:
                    created = (await conn.execute(self._insert_one, row)).one()
                    await self._wakeups.notify(conn)
                    outcomes.append(job_from_row(created))
            except ITEM_ERRORS:
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
        """Take up to `limit` runnable jobs: one PROCESSING job whose lease expired
        (its worker died: a crash), then due QUEUED ones, highest priority first.
        One lost job per claim: jobs that died together (a poison job and the
        neighbours it took down) go to different claims, not down together again."""
        now = self._now()
        # Two index scans rather than one OR: with an OR the planner sorts every
        # runnable row to find the first few, and the queue can hold millions.
        lost = (
            select(jobs.c.id, jobs.c.lease_owner)
            .where(jobs.c.status == JobStatus.PROCESSING.value, jobs.c.lease_expires_at < now)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        queued = (
            select(jobs.c.id)
            .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_at <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at)
            .with_for_update(skip_locked=True)
        )
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
                status_update(jobs, JobStatus.PROCESSING, JOB_ALLOWED_FROM, jobs.c.id.in_(ids))
                .values(
                    lease_owner=worker,
                    lease_expires_at=now + lease_s,
                    attempts=jobs.c.attempts + 1,
                    # SET reads the old row: a PROCESSING job here lost its worker.
                    crashes=case(
                        (jobs.c.status == _PROCESSING, jobs.c.crashes + 1), else_=jobs.c.crashes
                    ),
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
        self, worker: str, attempts: Mapping[str, int], lease_s: float
    ) -> dict[str, bool]:
        """Extend the leases this worker still holds, in these attempts, and that have
        not expired; job id -> cancel requested. Jobs missing from the answer are no
        longer this worker's."""
        if not attempts:
            return {}
        now = self._now()
        statement = (
            update(jobs)
            .where(
                tuple_(jobs.c.id, jobs.c.attempts).in_(sorted(attempts.items())),
                jobs.c.lease_owner == worker,
                jobs.c.status == _PROCESSING,
                jobs.c.lease_expires_at >= now,
            )
            .values(lease_expires_at=now + lease_s)
            .returning(jobs.c.id, jobs.c.cancel_requested)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(statement)).all()
        return {r.id: bool(r.cancel_requested) for r in rows}

    async def cancels_requested(self, job_ids: Collection[str]) -> set[str]:
        if not job_ids:
            return set()
        query = select(jobs.c.id).where(
            jobs.c.id.in_(sorted(job_ids)), jobs.c.cancel_requested.is_(True)
        )
        async with self._read() as conn:
            return set((await conn.execute(query)).scalars().all())

    async def update_progress(
        self,
        lease: Lease,
        job_id: str,
        steps: list[dict[str, Any]],
        progress: float,
        deliveries_out: Sequence[NewDelivery] = (),
    ) -> bool:
        """Record step progress (not a status change); False if the lease was lost."""
        now = self._clock()  # for the outbox rows
        statement = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.PROCESSING.value,
                jobs.c.lease_owner == lease.worker,
                jobs.c.attempts == lease.attempt,
            )
            .values(steps=steps, progress=progress, updated_at=self._now())
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
        """Flag the job and, if it is queued, cancel it in the same transaction. The
        flag stays for whoever holds or next claims it: a running job stops at its
        next check, and a job about to be retried is cancelled instead (see
        `unless_cancelled`)."""
        now, at = self._clock(), self._now()
        cancel_queued = (
            status_update(
                jobs, JobStatus.CANCELLED, JOB_ALLOWED_FROM, jobs.c.id == job_id,
                only_from=_QUEUED_ONLY,
            )
            .values(
                error=CANCELLED_BY_REQUEST, finished_at=at, updated_at=at, lease_owner=None,
                lease_expires_at=None,
            )
            .returning(*jobs.c)
        )  # fmt: skip
        async with self._tx() as conn:
            flagged = await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(_UNFINISHED))
                .values(cancel_requested=True, updated_at=at)
            )
            if flagged.rowcount == 1:
                row = (await conn.execute(cancel_queued)).first()
                if row is not None:
                    cancelled = job_from_row(row)
                    await self._insert_deliveries(conn, job_id, deliveries_out, now)
                    if cancelled.batch_id is not None:
                        await self._count_chunks(conn, cancelled.batch_id, 1, (0, 0), now)
            current = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return job_from_row(current) if current is not None else None

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest queued job falls due or the earliest lease
        expires, by the database's clock; None: no job waits for either."""
        now = self._now()
        queued = select(func.min(jobs.c.run_at) - now).where(
            jobs.c.status == JobStatus.QUEUED.value
        )
        leased = select(func.min(jobs.c.lease_expires_at) - now).where(jobs.c.status == _PROCESSING)
        async with self._read() as conn:
            waits = [(await conn.execute(q)).scalar() for q in (queued, leased)]
        found = [float(w) for w in waits if w is not None]
        return max(0.0, min(found)) if found else None

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
