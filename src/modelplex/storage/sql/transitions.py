"""Job status transitions on SQL: the guarded UPDATE, shared transactions, the outbox.

Every transition is one `status_update` (the one guarded writer) plus, for a
worker, its lease (`lease_owner` and attempt). Its times (`updated_at`,
`finished_at`, a retry's `run_at`) are the database's clock's. Concurrent transitions share a
transaction (see `storage/grouping.py`), each still guarded on its own. Rows
are locked in one order, jobs by id and then batches, so concurrent groups
cannot deadlock. Webhook deliveries a transition causes are inserted in its
transaction (a transactional outbox: no event is lost, and none is sent for a
change that did not happen).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, bindparam, false, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.records import (
    CHANGEABLE,
    JOB_ALLOWED_FROM,
    Clock,
    Job,
    JobChanges,
    JobStatus,
    Lease,
    NewDelivery,
    pending_steps,
)
from modelplex.storage.grouping import GroupCommit
from modelplex.storage.sql.base import now_sql
from modelplex.storage.sql.batches import BatchQueries
from modelplex.storage.sql.deliveries import DeliveryQueries
from modelplex.storage.sql.engines import Engines
from modelplex.storage.sql.guarded import status_update
from modelplex.storage.sql.rows import job_from_row
from modelplex.storage.sql.schema import jobs

ITEM_ERRORS = (IntegrityError, DataError)
"""Errors that belong to one write of a group, not to the database as a whole."""


@dataclass(frozen=True, slots=True)
class _Transition:
    job_id: str
    to: JobStatus
    only_from: frozenset[JobStatus] | None
    lease: Lease | None
    fields: dict[str, Any]
    deliveries: tuple[NewDelivery, ...]
    batch_delta: tuple[int, int] | None
    unless_cancelled: bool
    now: float


@functools.lru_cache(maxsize=256)
def _statement(
    to: JobStatus,
    only_from: frozenset[JobStatus] | None,
    leased: bool,
    unless_cancelled: bool,
    keys: tuple[str, ...],
    clock: str,
) -> Any:
    """The guarded UPDATE for one shape of transition, built once with bound
    parameters (building it per call cost more CPU than the round trip)."""
    now = now_sql(clock)
    where = [jobs.c.id == bindparam("w_id")]
    if leased:
        where += [
            jobs.c.lease_owner == bindparam("w_owner"),
            jobs.c.attempts == bindparam("w_attempt"),
        ]
    if unless_cancelled:
        where.append(jobs.c.cancel_requested == false())
    statement = status_update(jobs, to, JOB_ALLOWED_FROM, *where, only_from=only_from)
    values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in keys if k != "run_after_s"}
    values["updated_at"] = now
    if "run_after_s" in keys:
        values["run_at"] = now + bindparam("v_run_after_s", type_=Float)
    if to.finished:
        values["finished_at"] = now
    if to is not JobStatus.PROCESSING:  # nobody holds a queued or finished job
        values["lease_owner"] = None
        values["lease_expires_at"] = None
    return statement.values(values).returning(*jobs.c)


class TransitionQueries(BatchQueries, DeliveryQueries):
    def __init__(self, engines: Engines, clock: Clock | None, writers: int) -> None:
        super().__init__(engines, clock)
        self._transitions: GroupCommit[_Transition, Job | None] = GroupCommit(
            self._flush_transitions, "job-transitions", writers
        )

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
        item = _Transition(
            job_id, to, only_from, lease, fields, tuple(deliveries_out), batch_delta,
            unless_cancelled, self._clock(),
        )  # fmt: skip
        job = await self._transitions.submit(item)
        if job is not None and to is JobStatus.QUEUED:
            self._wakeups.signal()
        return job

    async def release(self, job_id: str, lease: Lease) -> Job | None:
        now = self._now()
        # Not a group member: it changes `attempts`, which no caller's transition may.
        statement = status_update(
            jobs, JobStatus.QUEUED, JOB_ALLOWED_FROM, jobs.c.id == job_id,
            jobs.c.lease_owner == lease.worker, jobs.c.attempts == lease.attempt,
        ).values(
            attempts=jobs.c.attempts - 1, run_at=now, updated_at=now, lease_owner=None,
            lease_expires_at=None,
        ).returning(*jobs.c)  # fmt: skip
        job = await self._release(job_id, statement)
        if job is not None:
            self._wakeups.signal()
        return job

    async def _release(self, job_id: str, statement: Any) -> Job | None:
        async with self._tx() as conn:
            row = (await conn.execute(statement)).first()
            if row is None:
                return None
            # It will run from the start: no step of it is running any more.
            steps = pending_steps([step["name"] for step in row._mapping["steps"] or []])
            reset = (
                update(jobs).where(jobs.c.id == job_id).values(steps=steps, progress=0.0)
            ).returning(*jobs.c)
            row = (await conn.execute(reset)).one()
            await self._wakeups.notify(conn)
        return job_from_row(row)

    async def _flush_transitions(
        self, group: list[_Transition]
    ) -> list[Job | BaseException | None]:
        try:
            async with self._tx() as conn:
                return await self._apply_all(conn, group)
        except ITEM_ERRORS:
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
        now_params = self._now_params()
        requeued = False
        # Jobs in id order, batches last: every transaction locks in the same order.
        for index in sorted(range(len(group)), key=lambda i: group[i].job_id):
            item = group[index]
            statement = _statement(
                item.to, item.only_from, item.lease is not None, item.unless_cancelled,
                tuple(sorted(item.fields)), self._clock_kind,
            )  # fmt: skip
            params = {f"v_{k}": v for k, v in item.fields.items()}
            params.update(now_params)
            params["w_id"] = item.job_id
            if item.lease is not None:
                params["w_owner"] = item.lease.worker
                params["w_attempt"] = item.lease.attempt
            row = (await conn.execute(statement, params)).first()
            job = job_from_row(row) if row is not None else None
            results[index] = job
            if job is None:
                continue
            requeued = requeued or job.status is JobStatus.QUEUED
            await self._insert_deliveries(conn, job.id, item.deliveries, item.now)
            if item.batch_delta is not None and job.batch_id is not None and item.to.finished:
                tally = counts[job.batch_id]
                tally[0] += 1
                tally[1] += item.batch_delta[0]
                tally[2] += item.batch_delta[1]
        now = self._clock()
        for batch_id in sorted(counts):
            chunks, completed, failed = counts[batch_id]
            await self._count_chunks(conn, batch_id, chunks, (completed, failed), now)
        if requeued:  # a retry: other workers learn its due time
            await self._wakeups.notify(conn)
        return [results[i] for i in range(len(group))]
