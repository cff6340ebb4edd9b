"""Batches: a row of counters over chunk jobs, updated in the chunks' own transactions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.jobs.models import ALLOWED_FROM, CANCELLED_BY_REQUEST, Batch, Job, JobStatus, NewJob
from modelplex.storage.rows import batch_from_row, job_from_row, new_job_row
from modelplex.storage.schema import batches, jobs
from modelplex.storage.sql import SqlBase


class BatchQueries(SqlBase):
    async def create_batch(self, batch: dict[str, Any], chunk_jobs: Sequence[NewJob]) -> Batch:
        now = time.time()
        finished = now if not chunk_jobs else None  # every line refused: done at once
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    insert(batches)
                    .values(**batch, created_at=now, finished_at=finished)
                    .returning(*batches.c)
                )
            ).one()
            for start in range(0, len(chunk_jobs), 500):
                await conn.execute(
                    insert(jobs), [new_job_row(j, now) for j in chunk_jobs[start : start + 500]]
                )
        return batch_from_row(row)

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
        """Cancel a batch: queued chunks at once, running chunks at their next check.
        The batch ends CANCELLED when its last chunk ends.

        This is the set-based form of the QUEUED -> CANCELLED transition, guarded by
        the same ALLOWED_FROM table. Chunk rows are locked before the batch row, the
        order every transition uses, so the two cannot deadlock."""
        now = time.time()
        queued = [s.value for s in ALLOWED_FROM[JobStatus.CANCELLED] if s is JobStatus.QUEUED]
        async with self._tx() as conn:
            if await self._get_batch(conn, batch_id) is None:
                return None
            cancelled = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.batch_id == batch_id, jobs.c.status.in_(queued))
                    .values(
                        status=JobStatus.CANCELLED.value,
                        finished_at=now,
                        updated_at=now,
                        error=CANCELLED_BY_REQUEST,
                    )
                )
            ).rowcount
            await conn.execute(
                update(jobs)
                .where(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=now)
            )
            await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.finished_at.is_(None))
                .values(status=JobStatus.CANCELLED.value)
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
