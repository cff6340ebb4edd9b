"""Batches: a row of counters over chunk jobs, updated in the chunks' own transactions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

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
)
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.guarded import status_update
from modelplex.storage.sql.rows import batch_from_row, job_from_row, new_batch_row, new_job_row
from modelplex.storage.sql.schema import batches, jobs

_QUEUED_ONLY = frozenset({JobStatus.QUEUED})
_INSERT_ROWS = 500


class BatchQueries(SqlBase):
    async def create_batch(self, batch: NewBatch, chunk_jobs: Sequence[NewJob]) -> Batch:
        now = self._clock()
        row = new_batch_row(batch, len(chunk_jobs), now)
        chunk_rows = [
            new_job_row(job, now, batch_id=row["id"], chunk_index=index)
            for index, job in enumerate(chunk_jobs)
        ]
        async with self._tx() as conn:
            created = (
                await conn.execute(insert(batches).values(**row).returning(*batches.c))
            ).one()
            for start in range(0, len(chunk_rows), _INSERT_ROWS):
                await conn.execute(insert(jobs), chunk_rows[start : start + _INSERT_ROWS])
        return batch_from_row(created)

    async def get_batch(self, batch_id: str) -> Batch | None:
        async with self._read() as conn:
            return await self._get_batch(conn, batch_id)

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

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        """Queued chunks are cancelled at once (the guarded QUEUED -> CANCELLED
        transition, set-based), running ones flagged. Chunk rows are locked before
        the batch row, the order every transition uses, so the two cannot deadlock."""
        now = self._clock()
        async with self._tx() as conn:
            if await self._get_batch(conn, batch_id) is None:
                return None
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
        When the last chunk is done the batch is finished: COMPLETED, unless it was
        cancelled (then it stays CANCELLED)."""
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
        done = (batches.c.id == batch_id, batches.c.chunks_done >= batches.c.chunks)
        await conn.execute(status_update(batches, BatchStatus.COMPLETED, BATCH_ALLOWED_FROM, *done))
        await conn.execute(
            update(batches).where(*done, batches.c.finished_at.is_(None)).values(finished_at=now)
        )
