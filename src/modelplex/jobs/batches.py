"""Batches: a JSONL file of inputs in, JSONL files of results and errors out.

Each line is `{"custom_id": "...", "input": ...}` (for a model, `input` is one
instance; for a pipeline, its input object). Lines are grouped into chunks of
`batch_chunk_size`, each chunk one job: workers process chunks like any job
(leases, retries, resumption after a crash), and a chunk's lines share model
calls. A line that is not valid JSON, or lacks a `custom_id`, fails alone at
submission (the store keeps one row per refused line, and the batch's row
counts them); a line the model refuses fails alone when its chunk runs. A
chunk's input over `blob_threshold_bytes` lives in the blob store, as a job's.

The file is read and parsed a block of lines at a time, each block's chunks and
refusals written before the next is read, in bounded transactions; the batch
stays CREATING, its chunks not yet claimable, until the last chunk is in
(`BatchStore.create_batch_from`). If its
creator dies midway, nobody was told its id: retention deletes a batch still
CREATING `CREATION_LIMIT_S` after it began, with its chunks and their blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import orjson

from modelplex.core import offload
from modelplex.core.envelopes import parse
from modelplex.core.instances import PredictParameters
from modelplex.core.jsonlimits import JsonLimits
from modelplex.core.validation import check_options
from modelplex.errors import (
    BatchNotFound,
    InternalError,
    InvalidInput,
    JobFinished,
    PipelineNotReady,
)
from modelplex.jobs.batch_lines import LineParser, line_blocks
from modelplex.jobs.service import JobService, check_metadata
from modelplex.records import (
    Batch,
    BatchStatus,
    Job,
    JobError,
    JobKind,
    JobStatus,
    NewBatch,
    NewJob,
)
from modelplex.storage.interface import BatchPart, Store

_PAGE = 200
_BLOB_WRITES = 8
CREATION_LIMIT_S = 3600.0
"""A batch still CREATING this long after it began has lost its creator."""


class BatchService:
    def __init__(self, store: Store, jobs: JobService) -> None:
        self.store = store
        self.jobs = jobs

    async def create(
        self,
        content: AsyncIterator[bytes],
        *,
        kind: JobKind,
        target: str,
        version: str | None = None,
        options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Batch:
        """The batch of the JSONL file `content`, read as it comes: never held whole
        (`batch_lines`); an error raised while reading it (a body over its limit, a
        file over `max_batch_lines`) leaves no batch and no blob behind."""
        settings = self.jobs.settings
        check_input = None
        if kind is JobKind.MODEL:
            version = await self.jobs.pin_version(target, version)
        else:
            pipeline = self.jobs.pipelines.get(target)
            if pipeline.config is None:
                raise PipelineNotReady(f"pipeline '{target}' is not ready: {pipeline.reason}")
            check_input = pipeline.check_input  # a line its schema refuses is refused now
        if options is not None:
            if kind is not JobKind.MODEL:
                raise InvalidInput("options (top_k, outputs) apply to model batches only")
            parameters = parse(PredictParameters, options, "options")
            # Refused now, not on every line: the pinned version cannot honour them.
            served = self.jobs.dataplane.resolve(target, version)
            check_options(served, parameters.outputs, parameters.top_k)
        check_metadata(metadata)
        limits = JsonLimits.of(settings)
        parser = LineParser(
            settings.max_batch_lines, limits, settings.batch_chunk_size, check_input
        )
        refs: list[str] = []

        async def part(valid: list[dict[str, Any]], refused: list[dict[str, Any]]) -> BatchPart:
            payloads = await offload.cpu_bound(
                chunk_inputs, valid, settings.batch_chunk_size, kind, options,
                settings.blob_threshold_bytes,
            )  # fmt: skip
            written = await self._store_large(payloads)
            refs.extend(ref for ref in written if ref is not None)
            chunk_jobs = [
                NewJob(
                    kind=JobKind.BATCH_CHUNK,
                    target=target,
                    version=version,
                    max_attempts=settings.job_max_attempts,
                    steps=["chunk"],
                    input=inline,
                    input_ref=ref,
                )
                for (inline, _), ref in zip(payloads, written, strict=True)
            ]
            return BatchPart(refused, chunk_jobs, len(valid))

        async def parts() -> AsyncGenerator[BatchPart]:
            # One block of lines at a time, each parsed off the event loop: the
            # store writes a part before the next is read.
            async for block in line_blocks(content, limits.max_bytes):
                if isinstance(block, int):
                    yield BatchPart([parser.too_long(block)], [], 0)
                else:
                    yield await part(*await offload.cpu_bound(parser.feed, block))
            yield await part(parser.finish(), [])

        head = NewBatch(kind, target, version, 0, [], metadata)
        stream = parts()
        try:
            return await self.store.create_batch_from(head, stream)
        except BaseException:
            await self._delete_blobs(refs)  # the store undid its part
            raise
        finally:
            await stream.aclose()

    async def _store_large(self, payloads: list[tuple[Any, bytes | None]]) -> list[str | None]:
        """Chunk inputs over `blob_threshold_bytes` go to the blob store, as job inputs
        do, a few at a time; if one fails, those already written are deleted."""
        refs: list[str | None] = [None] * len(payloads)
        large = [i for i, (_, encoded) in enumerate(payloads) if encoded is not None]
        try:
            for start in range(0, len(large), _BLOB_WRITES):
                group = large[start : start + _BLOB_WRITES]
                written = await asyncio.gather(*(self._put(payloads[i][1]) for i in group))
                for i, ref in zip(group, written, strict=True):
                    refs[i] = ref
        except BaseException:
            await self._delete_blobs(refs)
            raise
        return refs

    async def _put(self, encoded: bytes | None) -> str:
        return await self.jobs.blobs.put(encoded or b"")

    async def _delete_blobs(self, refs: Sequence[str | None]) -> None:
        for ref in refs:
            if ref is not None:
                with contextlib.suppress(Exception):  # best effort: an orphan blob is harmless
                    await self.jobs.blobs.delete(ref)

    async def get(self, batch_id: str) -> Batch:
        batch = await self.store.get_batch(batch_id)
        # A batch still CREATING has no id its client knows yet: to the API it does
        # not exist (and CREATING is no status a client ever sees).
        if batch is None or batch.status is BatchStatus.CREATING:
            raise BatchNotFound(f"batch '{batch_id}' does not exist")
        return batch

    async def list_batches(
        self, *, status: BatchStatus | None, target: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Batch], str | None]:
        """A page of batches, newest first, and the cursor of the next page (None: the last)."""
        found = await self.store.list_batches(
            status=status, target=target, limit=limit + 1, before=cursor
        )
        page = found[:limit]
        return page, (page[-1].id if len(found) > limit and page else None)

    async def get_with_refusals(
        self, batch_id: str, limit: int
    ) -> tuple[Batch, list[dict[str, Any]]]:
        """The batch and its first `limit` refused lines: two small reads, whatever
        the number of refusals."""
        batch = await self.get(batch_id)
        refusals = await self.store.batch_refusals(batch_id, 0, limit) if batch.refused else []
        return batch, refusals

    async def cancel(self, batch_id: str) -> Batch:
        """Chunks that have not started are CANCELLED at once, running ones stop
        their lines at the next check; a batch that already finished (otherwise
        than by a cancel) is JobFinished."""
        _unless_finished(await self.get(batch_id))
        batch = await self.store.cancel_batch(batch_id)
        if batch is None:
            raise BatchNotFound(f"batch '{batch_id}' does not exist")
        return _unless_finished(batch)

    async def lines(self, batch_id: str, *, errors: bool) -> AsyncIterator[bytes]:
        """The results (or errors) as JSONL, in input order within each chunk."""
        await self.get(batch_id)
        if errors:
            line = 0
            while refused := await self.store.batch_refusals(batch_id, line, _PAGE):
                line = refused[-1]["line"]
                yield b"".join(orjson.dumps(r) + b"\n" for r in refused)
        after = -1
        while True:
            chunks = await self.store.batch_chunks(batch_id, after, _PAGE)
            if not chunks:
                return
            for chunk in chunks:
                after = chunk.chunk_index if chunk.chunk_index is not None else after
                for item in await self._chunk_lines(chunk):
                    if ("error" in item) == errors:
                        yield orjson.dumps(item) + b"\n"

    async def _chunk_lines(self, chunk: Job) -> list[dict[str, Any]]:
        # A cancelled chunk keeps the lines that ran before the cancel reached it.
        kept = chunk.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
        if kept and (chunk.result is not None or chunk.result_ref is not None):
            result = (
                chunk.result
                if chunk.result_ref is None
                else orjson.loads(await self.jobs.blobs.get(chunk.result_ref))
            )
            items: list[dict[str, Any]] = result["items"]
            return items
        if chunk.status is JobStatus.FAILED:
            error = chunk.error or JobError.of(InternalError("the chunk failed")).as_dict()
            data = (
                chunk.input
                if chunk.input_ref is None
                else orjson.loads(await self.jobs.blobs.get(chunk.input_ref))
            )
            return [{"custom_id": item["custom_id"], "error": error} for item in data["items"]]
        return []  # still running, or cancelled before any of its lines ran


def _unless_finished(batch: Batch) -> Batch:
    if batch.finished_at is not None and batch.status is not BatchStatus.CANCELLED:
        raise JobFinished(f"batch '{batch.id}' has already finished: {batch.status.value}")
    return batch


def chunk_inputs(
    valid: list[dict[str, Any]],
    size: int,
    kind: JobKind,
    options: dict[str, Any] | None,
    threshold: int,
) -> list[tuple[Any, bytes | None]]:
    """Each chunk's input: (inline, None), or (None, its JSON) when that is over
    `threshold` bytes and belongs in the blob store."""
    payloads: list[tuple[Any, bytes | None]] = []
    for i in range(0, len(valid), size):
        document = {"target_kind": kind.value, "items": valid[i : i + size], "options": options}
        encoded = orjson.dumps(document)
        payloads.append((None, encoded) if len(encoded) > threshold else (document, None))
    return payloads
