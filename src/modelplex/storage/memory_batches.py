"""The memory store's reads of batches (`MemoryStore` keeps the writes, which share
its job records' helpers)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from modelplex.records import Batch, BatchStatus, Job

Lines = list[dict[str, Any]]


class BatchReads:
    _jobs: dict[str, Job]
    _batches: dict[str, Batch]
    _chunks: dict[str, list[str]]
    """Batch id -> chunk job ids, by chunk index."""
    _refusals: dict[str, Lines]
    """Batch id -> the lines refused at submission, by line number."""

    async def get_batch(self, batch_id: str) -> Batch | None:
        return deepcopy(self._batches.get(batch_id))

    async def list_batches(
        self,
        *,
        status: BatchStatus | None = None,
        target: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Batch]:
        found = [
            b
            for b in sorted(self._batches.values(), key=lambda b: b.id, reverse=True)
            if b.status is not BatchStatus.CREATING
            and (status is None or b.status is status)
            and (target is None or b.target == target)
            and (before is None or b.id < before)
        ]
        return [deepcopy(b) for b in found[:limit]]

    async def batch_chunks(self, batch_id: str, after_index: int, limit: int) -> list[Job]:
        ids = self._chunks.get(batch_id, [])
        start = max(after_index + 1, 0)  # list position == chunk index
        return [deepcopy(self._jobs[i]) for i in ids[start : start + limit]]

    async def batch_refusals(self, batch_id: str, after_line: int, limit: int) -> Lines:
        after = [r for r in self._refusals.get(batch_id, []) if r["line"] > after_line]
        return deepcopy(after[:limit])

    async def purge_abandoned_batches(self, created_before: float, limit: int = 100) -> list[Job]:
        return []  # a memory store dies with its creator: no batch is ever left CREATING
