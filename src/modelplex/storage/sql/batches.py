"""Batches: a row of counters over chunk jobs, updated in the chunks' own transactions,
and the lines refused at submission, one row each."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.errors import StoreUnavailable
from modelplex.records import (
    BATCH_ALLOWED_FROM,
    CANCELLED_BY_REQUEST,
    JOB_ALLOWED_FROM,
    Batch,
    BatchStatus,
    Job,
    JobStatus,
    NewBatch,
    NewJob,
    batch_outcome,
)
from modelplex.storage.interface import BatchPart
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.guarded import status_update
from modelplex.storage.sql.rows import (
    batch_from_row,
    job_from_row,
    new_batch_row,
    new_job_row,
    refusal_from_row,
    refusal_row,
)
from modelplex.storage.sql.schema import batch_refusals, batches, jobs

_QUEUED_ONLY = frozenset({JobStatus.QUEUED})
_CHUNKS_PER_TX = 100
_REFUSALS_PER_TX = 1000
NOT_YET = 1e15
"""`run_at` of a chunk whose batch is still CREATING: no claim finds it due."""


class BatchQueries(SqlBase):
    async def create_batch(self, batch: NewBatch, chunk_jobs: Sequence[NewJob]) -> Batch:
        valid = batch.total - len(batch.invalid_lines)
        return await self.create_batch_from(
            batch, _one(BatchPart(batch.invalid_lines, list(chunk_jobs), valid))
        )

    async def create_batch_from(self, batch: NewBatch, parts: AsyncIterator[BatchPart]) -> Batch:
        """In bounded transactions, so that other writers (SQLite has one at a time)
        take turns with a big batch: the CREATING row, then each part's refusals and
        chunks (which no claim sees: they are due only once the batch is sealed),
        the batch's counts growing with the part's last transaction, then the seal.
        A failure midway deletes what was written."""
        now = self._clock()
        row = new_batch_row(batch, 0, now) | dict.fromkeys(("total", "failed", "refused"), 0)
        batch_id = row["id"]
        async with self._tx() as conn:
            await conn.execute(insert(batches).values(**row))
        try:
            index = 0
            async for part in parts:
                await self._write_part(batch_id, part, index, now)
                index += len(part.chunks)
            return await self._seal(batch_id)
        except BaseException:
            with contextlib.suppress(Exception):  # if the database is gone, retention is not
                await self._delete_batches([batch_id])
            raise

    async def _write_part(self, batch_id: str, part: BatchPart, first: int, now: float) -> None:
        """One part, a bounded number of rows per transaction; its last one adds the
        part to the batch's counts."""
        per_tx = _REFUSALS_PER_TX
        writes: list[tuple[Any, list[dict[str, Any]]]] = [
            (batch_refusals, [refusal_row(batch_id, r) for r in part.refused[i : i + per_tx]])
            for i in range(0, len(part.refused), per_tx)
        ]
        for start in range(0, len(part.chunks), _CHUNKS_PER_TX):
            chunk_rows = [
                {**new_job_row(job, now, batch_id=batch_id, chunk_index=index),
                 "run_at": NOT_YET}
                for index, job in enumerate(
                    part.chunks[start : start + _CHUNKS_PER_TX], start=first + start
                )
            ]  # fmt: skip
            writes.append((jobs, chunk_rows))
        refused = len(part.refused)
        counts = (
            update(batches)
            .where(batches.c.id == batch_id)
            .values(
                total=batches.c.total + part.lines + refused,
                failed=batches.c.failed + refused,
                refused=batches.c.refused + refused,
                chunks=batches.c.chunks + len(part.chunks),
            )
        )
        if not writes:
            if part.lines:
                async with self._tx() as conn:
                    await conn.execute(counts)
            return
        for number, (table, rows) in enumerate(writes, start=1):
            async with self._tx() as conn:
                await conn.execute(insert(table), rows)
                if number == len(writes):
                    await conn.execute(counts)

    async def _seal(self, batch_id: str) -> Batch:
        """Every chunk is in: make them due and the batch PROCESSING (with no chunks,
        COMPLETED at once), in one transaction."""
        now = self._clock()
        async with self._tx() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.QUEUED.value)
                # Due by the database's clock, which every claim compares against.
                .values(run_at=self._now(), updated_at=now)
            )
            sealed = await conn.execute(
                status_update(
                    batches, BatchStatus.PROCESSING, BATCH_ALLOWED_FROM, batches.c.id == batch_id
                )
            )
            if sealed.rowcount != 1:  # retention took it for abandoned: start again
                raise StoreUnavailable("the batch took too long to create; submit it again")
            await self._count_chunks(conn, batch_id, 0, (0, 0), now)
            found = await self._get_batch(conn, batch_id)
        if found is None:  # the row was just updated in this transaction
            raise StoreUnavailable("the batch disappeared while it was created")
        return found

    async def get_batch(self, batch_id: str) -> Batch | None:
        async with self._read() as conn:
            return await self._get_batch(conn, batch_id)

    async def list_batches(
        self,
        *,
        status: BatchStatus | None = None,
        target: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Batch]:
        """Newest first (ids sort by creation), by the primary key's index."""
        query = (
            select(batches)
            .where(batches.c.status != BatchStatus.CREATING.value)
            .order_by(batches.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(batches.c.status == status.value)
        if target is not None:
            query = query.where(batches.c.target == target)
        if before is not None:
            query = query.where(batches.c.id < before)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [batch_from_row(r) for r in rows]

    async def batch_chunks(self, batch_id: str, after_index: int, limit: int) -> list[Job]:
        query = (
            select(jobs)
            .where(jobs.c.batch_id == batch_id, jobs.c.chunk_index > after_index)
            .order_by(jobs.c.chunk_index)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [job_from_row(r) for r in rows]

    async def batch_refusals(
        self, batch_id: str, after_line: int, limit: int
    ) -> list[dict[str, Any]]:
        query = (
            select(batch_refusals)
            .where(batch_refusals.c.batch_id == batch_id, batch_refusals.c.line > after_line)
            .order_by(batch_refusals.c.line)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [refusal_from_row(r) for r in rows]

    async def purge_abandoned_batches(self, created_before: float, limit: int = 100) -> list[Job]:
        query = (
            select(batches.c.id)
            .where(
                batches.c.status == BatchStatus.CREATING.value,
                batches.c.created_at < created_before,
            )
            .limit(limit)
        )
        async with self._read() as conn:
            abandoned = list((await conn.execute(query)).scalars().all())
        return await self._delete_batches(abandoned) if abandoned else []

    async def _delete_batches(self, batch_ids: list[str]) -> list[Job]:
        """Batches that never finished creating, with their chunks, a bounded number
        of chunks per transaction; the batch row goes last (its refusals cascade)."""
        removed: list[Job] = []
        for batch_id in batch_ids:
            while True:
                async with self._tx() as conn:
                    status = (
                        await conn.execute(select(batches.c.status).where(batches.c.id == batch_id))
                    ).scalar()
                    if status != BatchStatus.CREATING.value:
                        break  # sealed meanwhile (or gone): it is not abandoned
                    query = select(jobs).where(jobs.c.batch_id == batch_id).limit(_CHUNKS_PER_TX)
                    chunk_rows = (await conn.execute(query)).all()
                    if not chunk_rows:
                        await conn.execute(delete(batches).where(batches.c.id == batch_id))
                        break
                    ids = [r._mapping["id"] for r in chunk_rows]
                    await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
                    removed += [job_from_row(r) for r in chunk_rows]
        return removed

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        """Queued chunks are cancelled at once (the guarded QUEUED -> CANCELLED
        transition, set-based), running ones flagged. Chunk rows are locked before
        the batch row, the order every transition uses, so the two cannot deadlock."""
        now = self._clock()
        async with self._tx() as conn:
            found = await self._get_batch(conn, batch_id)
            if found is None or found.status is BatchStatus.CREATING:
                return found  # still being created: none of its chunks runs yet
            cancel_queued = status_update(
                jobs, JobStatus.CANCELLED, JOB_ALLOWED_FROM, jobs.c.batch_id == batch_id,
                only_from=_QUEUED_ONLY,
            ).values(finished_at=now, updated_at=now, error=CANCELLED_BY_REQUEST)  # fmt: skip
            cancelled = (await conn.execute(cancel_queued)).rowcount
            await conn.execute(
                update(jobs)
                .where(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=now)
            )
            await conn.execute(
                status_update(
                    batches, BatchStatus.CANCELLED, BATCH_ALLOWED_FROM, batches.c.id == batch_id
                )
            )
            await self._count_chunks(conn, batch_id, cancelled, (0, 0), now)
            return await self._get_batch(conn, batch_id)

    @staticmethod
    async def _get_batch(conn: AsyncConnection, batch_id: str) -> Batch | None:
        row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
        return batch_from_row(row) if row else None

    @staticmethod
    async def _count_chunks(
        conn: AsyncConnection, batch_id: str, chunks: int, lines: tuple[int, int], now: float
    ) -> None:
        """Chunks finished: add their lines to the batch's counts, in their transaction.
        When the last chunk is done the batch is finished: COMPLETED, PARTIALLY_FAILED
        or FAILED by its lines (`batch_outcome`, here in SQL over the counts just
        written), unless it was cancelled (then it stays CANCELLED)."""
        completed, failed = lines
        counts = (
            await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id)
                .values(
                    completed=batches.c.completed + completed,
                    failed=batches.c.failed + failed,
                    chunks_done=batches.c.chunks_done + chunks,
                )
                .returning(
                    batches.c.completed, batches.c.total, batches.c.chunks_done, batches.c.chunks
                )
            )
        ).first()
        if counts is None or counts.chunks_done < counts.chunks:
            return
        # The counts were read under this transaction's lock on the row: they are final.
        outcome = batch_outcome(counts.completed, counts.total)
        await conn.execute(
            status_update(batches, outcome, BATCH_ALLOWED_FROM, batches.c.id == batch_id)
        )
        await conn.execute(
            update(batches)
            .where(batches.c.id == batch_id, batches.c.finished_at.is_(None))
            .values(finished_at=now)
        )


async def _one(part: BatchPart) -> AsyncIterator[BatchPart]:
    yield part
