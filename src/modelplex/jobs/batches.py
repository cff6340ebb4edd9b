"""Batches: a JSONL file of inputs in, JSONL files of results and errors out.

Each line is `{"custom_id": "...", "input": ...}` (for a model, `input` is one
instance; for a pipeline, its input object). Lines are grouped into chunks of
`batch_chunk_size`, each chunk one job: workers process chunks like any job
(leases, retries, resumption after a crash), and a chunk's lines share model
calls. A line that is not valid JSON, or lacks a `custom_id`, fails alone at
submission (the store keeps one row per refused line, and the batch's row
counts them); a line the model refuses fails alone when its chunk runs. A
chunk's input over `blob_threshold_bytes` lives in the blob store, as a job's.

A batch is written in bounded transactions and stays CREATING, its chunks not
yet claimable, until the last chunk is in (`BatchStore.create_batch`). If its
creator dies midway, nobody was told its id: retention deletes a batch still
CREATING `CREATION_LIMIT_S` after it began, with its chunks and their blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from modelplex.core import jsonlimits, offload
from modelplex.core.envelopes import parse
from modelplex.core.instances import PredictParameters
from modelplex.core.jsonlimits import JsonLimits
from modelplex.errors import (
    BatchNotFound,
    InternalError,
    InvalidInput,
    PayloadTooLarge,
    PipelineNotReady,
)
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
from modelplex.storage.interface import Store

MAX_CUSTOM_ID = 256
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
        content: bytes,
        *,
        kind: JobKind,
        target: str,
        version: str | None = None,
        options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Batch:
        settings = self.jobs.settings
        if kind is JobKind.MODEL:
            version = self.jobs.pin_version(target, version)
        else:
            pipeline = self.jobs.pipelines.get(target)
            if pipeline.config is None:
                raise PipelineNotReady(f"pipeline '{target}' is not ready: {pipeline.reason}")
        if options is not None:
            if kind is not JobKind.MODEL:
                raise InvalidInput("options (top_k, outputs) apply to model batches only")
            parse(PredictParameters, options, "options")
        check_metadata(metadata)
        # Parsing a big file takes a while: not on the event loop.
        valid, invalid = await offload.cpu_bound(
            parse_lines, content, settings.max_batch_lines, JsonLimits.of(settings)
        )
        if not valid and not invalid:
            raise InvalidInput("the batch file has no lines")
        payloads = await asyncio.to_thread(
            chunk_inputs, valid, settings.batch_chunk_size, kind, options,
            settings.blob_threshold_bytes,
        )  # fmt: skip
        total = len(valid) + len(invalid)
        del valid  # the payloads hold the lines now
        refs = await self._store_large(payloads)
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
            for (inline, _), ref in zip(payloads, refs, strict=True)
        ]
        batch = NewBatch(kind, target, version, total, invalid, metadata)
        try:
            return await self.store.create_batch(batch, chunk_jobs)
        except BaseException:
            await self._delete_blobs(refs)  # the store undid its part
            raise

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

    async def _delete_blobs(self, refs: list[str | None]) -> None:
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

    async def get_with_refusals(
        self, batch_id: str, limit: int
    ) -> tuple[Batch, list[dict[str, Any]]]:
        """The batch and its first `limit` refused lines: two small reads, whatever
        the number of refusals."""
        batch = await self.get(batch_id)
        refusals = await self.store.batch_refusals(batch_id, 0, limit) if batch.refused else []
        return batch, refusals

    async def cancel(self, batch_id: str) -> Batch:
        await self.get(batch_id)
        batch = await self.store.cancel_batch(batch_id)
        if batch is None:
            raise BatchNotFound(f"batch '{batch_id}' does not exist")
        return batch

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
        if chunk.status is JobStatus.COMPLETED:
            result = await self.jobs.result(chunk.id)
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
        return []  # still running, or cancelled: nothing to report for its lines


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


def parse_lines(
    content: bytes, max_lines: int, limits: JsonLimits
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid items, and the lines refused with their error (line numbers from 1);
    each line is held to the JSON limits, as a JSON body would be."""
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if number > max_lines:
            raise InvalidInput(f"the batch file has more than {max_lines} lines")
        if not raw.strip():
            continue
        try:
            line = jsonlimits.loads(raw, limits, "the line")
        except (InvalidInput, PayloadTooLarge) as exc:
            invalid.append(_refused(number, None, str(exc)))
            continue
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            invalid.append(_refused(number, None, "each line needs a string custom_id"))
            continue
        if custom_id in seen:
            invalid.append(_refused(number, custom_id, "custom_id is not unique in the file"))
            continue
        seen.add(custom_id)
        if "input" not in line or set(line) - {"custom_id", "input"}:
            invalid.append(_refused(number, custom_id, "a line holds custom_id and input only"))
            continue
        valid.append({"custom_id": custom_id, "input": line["input"]})
    return valid, invalid


def _refused(line: int, custom_id: str | None, message: str) -> dict[str, Any]:
    error = JobError.of(InvalidInput(message)).as_dict()
    error.pop("step")
    return {"custom_id": custom_id, "line": line, "error": error}
