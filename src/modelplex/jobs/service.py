"""The jobs API's core: submit, look up, list, cancel. Knows no HTTP."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from modelplex.core import offload
from modelplex.core.dataplane import DataPlane
from modelplex.core.instances import parse_predict_json
from modelplex.core.served import ServedVersion
from modelplex.core.types import InferenceRequest
from modelplex.core.validation import CheckedRequest, check
from modelplex.errors import (
    IdempotencyConflict,
    InvalidInput,
    JobFinished,
    JobNotFinished,
    JobNotFound,
    ModelNotFound,
    ModelplexError,
    PipelineNotReady,
    VersionNotFound,
)
from modelplex.jobs import requests
from modelplex.jobs.callbacks import Resolver, check_callback_url
from modelplex.jobs.events import finish_event
from modelplex.jobs.pipelines import PipelineRegistry, PipelineState
from modelplex.records import (
    CANCELLED_BY_REQUEST,
    Delivery,
    Job,
    JobKind,
    JobStatus,
    NewJob,
)
from modelplex.settings import Settings
from modelplex.storage.blobs import BlobStore
from modelplex.storage.interface import DuplicateKey, Store

MAX_METADATA_BYTES = 16 * 1024
UPLOAD_CHUNK_BYTES = 1024 * 1024
INFERENCE_STEP = "inference"


class Upload(Protocol):
    """An uploaded file, read in chunks (Starlette's UploadFile is one)."""

    async def read(self, size: int = -1) -> bytes: ...

    async def seek(self, offset: int) -> None: ...


class BytesUpload:
    """An upload already in memory."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)

    async def seek(self, offset: int) -> None:
        self._buffer.seek(offset)


@dataclass
class SubmitRequest:
    """A job to create. Its fields' types and ranges (priority, callback events) are
    the request envelope's (`api.bodies.JobSubmit`); the rules that need the
    server's state (the target, the callback URL's address) are checked here."""

    kind: JobKind
    target: str
    input: Any = None
    upload: Upload | None = None
    """An uploaded file (a zip archive for album-tagging), copied to a blob in chunks."""
    upload_name: str | None = None
    version: str | None = None
    callback_url: str | None = None
    callback_events: list[str] = field(default_factory=list)
    priority: int = 0
    metadata: dict[str, Any] | None = None

    def fingerprint(self, upload_digest: str | None = None) -> str:
        """Same request, same fingerprint: what an idempotency key is compared on
        (`upload_digest`: the upload's sha256)."""
        canonical = orjson.dumps(
            {
                "kind": self.kind.value,
                "target": self.target,
                "version": self.version,
                "input": self.input,
                "upload": upload_digest,
                "callback_url": self.callback_url,
                "callback_events": sorted(self.callback_events),
                "priority": self.priority,
                "metadata": self.metadata,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()


async def _chunks(upload: Upload, digest: Any = None) -> AsyncIterator[bytes]:
    """The upload from its start, in chunks, hashed on the way when `digest` is given."""
    await upload.seek(0)
    while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
        if digest is not None:
            await offload.cpu_bound(digest.update, chunk)
        yield chunk


async def upload_digest(upload: Upload) -> str:
    digest = hashlib.sha256()
    async for _ in _chunks(upload, digest):
        pass
    return digest.hexdigest()


class JobService:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        dataplane: DataPlane,
        pipelines: PipelineRegistry,
        settings: Settings,
        resolver: Resolver | None = None,
        *,
        catch_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`catch_up`: follow the repository changes other processes made (whether
        there were any), so a version loaded elsewhere is found before it is refused."""
        self._catch_up = catch_up
        self.store = store
        self.blobs = blobs
        self.dataplane = dataplane
        self.pipelines = pipelines
        self.settings = settings
        self._resolver = resolver or Resolver(timeout_s=settings.callback_dns_timeout_s)

    async def submit(
        self, request: SubmitRequest, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """The job for this request: created (True), or the one an earlier
        request with the same idempotency key created (False)."""
        fingerprint = None  # only a request with a key is ever compared
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise InvalidInput("Idempotency-Key must be 1 to 200 characters")
            digest = await upload_digest(request.upload) if request.upload is not None else None
            fingerprint = await offload.cpu_bound(request.fingerprint, digest)
            existing = await self.store.get_by_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, fingerprint), False
        steps, max_attempts = await self._validate(request)
        checked = await self._check_model(request) if request.kind is JobKind.MODEL else None
        new = NewJob(
            kind=request.kind,
            target=request.target,
            version=checked.served.version if checked else request.version,
            max_attempts=max_attempts,
            steps=steps,
            priority=request.priority,
            metadata=request.metadata,
            callback_url=request.callback_url,
            callback_events=request.callback_events,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
        )
        new.input, new.input_ref, new.upload_ref = await self._store_input(request, checked)
        try:
            return await self.store.create(new), True
        except DuplicateKey as duplicate:  # a concurrent request with the same key won
            for ref in (new.input_ref, new.upload_ref):
                if ref is not None:
                    await self.blobs.delete(ref)  # this request's copy: no job holds it
            return self._replay(duplicate.existing, fingerprint), False

    @staticmethod
    def _replay(existing: Job, fingerprint: str | None) -> Job:
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key was used for job {existing.id} with a different request"
            )
        return existing

    async def _validate(self, request: SubmitRequest) -> tuple[list[str], int]:
        check_metadata(request.metadata)
        if request.callback_url is not None:
            await check_callback_url(
                request.callback_url,
                self.settings.webhook_allow_private,
                self._resolver,
                self.settings.webhook_allowed_hosts,
            )
        elif request.callback_events:
            raise InvalidInput("callback_events needs a callback_url")
        if request.kind is JobKind.MODEL:
            if request.upload is not None:
                raise InvalidInput(
                    f"a job for model '{request.target}' takes JSON, not a file: its 'input' is "
                    'a predict body, {"instance": ...} or {"instances": [...]} (a file\'s bytes '
                    'as {"b64": "..."} for a BYTES input); files go to pipelines that take them'
                )
            return [INFERENCE_STEP], self.settings.job_max_attempts
        pipeline = self.pipelines.get(request.target)
        if pipeline.state is not PipelineState.READY or pipeline.config is None:
            raise PipelineNotReady(f"pipeline '{request.target}' is not ready: {pipeline.reason}")
        if request.upload is not None:
            if not pipeline.accepts_upload:
                raise InvalidInput(
                    f"pipeline '{request.target}' takes no file: send its input as JSON "
                    "(its schema is in GET /v1/pipelines)"
                )
        else:  # checked now, so that a job is never accepted only to fail on its first step
            await offload.cpu_bound(pipeline.check_input, request.input)
        return pipeline.step_names, pipeline.config.max_attempts or self.settings.job_max_attempts

    async def pin_version(self, model: str, version: str | None) -> str:
        """The version a job for `model` will run: the one asked for, or today's
        default. Refuses what would certainly fail: an unknown model or version,
        a model that is not serving."""
        return (await self._resolve(model, version)).version

    async def _resolve(self, model: str, version: str | None) -> ServedVersion:
        """The served version, after catching up with the other processes' load calls
        if this one does not know it: VERSION_NOT_FOUND only if it is nowhere."""
        try:
            return self.dataplane.resolve(model, version)
        except (ModelNotFound, VersionNotFound) as refused:
            # Only what the repository folder holds can have been loaded elsewhere: a
            # mistyped name is refused without a look at the job store (nor a wait
            # behind a load another poll is doing).
            folder = self.dataplane.registry.repository / model
            if self._catch_up is None or not (folder / (version or "")).is_dir():
                raise
            try:
                caught_up = await self._catch_up()
            except ModelplexError:  # the store is down: the answer is still the 404
                raise refused from None
            if not caught_up:
                raise
        return self.dataplane.resolve(model, version)

    async def _check_model(self, request: SubmitRequest) -> CheckedRequest:
        """The job's predict body, decoded and checked exactly as the predict
        endpoint would, against the version the job pins (off the loop: a large
        body takes a while to convert)."""
        served = await self._resolve(request.target, request.version)
        return await offload.cpu_bound(_checked, request.input, served)

    async def _store_input(
        self, request: SubmitRequest, checked: CheckedRequest | None
    ) -> tuple[Any, str | None, str | None]:
        """(inline input, blob of a large input, blob of an uploaded file). Blob
        references are the server's own: nothing a client sends can name one."""
        if request.upload is not None:
            upload = await self.blobs.put_stream(_chunks(request.upload))
            return {"upload": {"filename": request.upload_name}}, None, upload
        threshold = self.settings.blob_threshold_bytes
        if checked is not None:
            if requests.encoded_size(checked) <= threshold:  # known without encoding it
                return requests.encode(checked), None, None
            encoded = await offload.cpu_bound(requests.encode_json, checked)
        else:
            document = request.input
            encoded = await offload.cpu_bound(orjson.dumps, document)
            if len(encoded) <= threshold:
                return document, None, None  # small: the store encodes it again, cheaply
        return None, await self.blobs.put(encoded), None

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"job '{job_id}' does not exist")
        return job

    async def list_jobs(
        self, *, status: JobStatus | None, target: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        jobs = await self.store.list_jobs(
            status=status, target=target, limit=limit + 1, before=cursor
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more and jobs else None)

    async def cancel(self, job_id: str) -> Job:
        """A queued job comes back CANCELLED; a running one with `cancel_requested`,
        and then it ends CANCELLED whatever its run comes to (the worker's final
        write is guarded by the flag). A job that already COMPLETED or FAILED is
        JobFinished; one already CANCELLED comes back as it is (a retried cancel)."""
        job = await self.get(job_id)
        if job.status.finished:
            return _unless_finished(job)
        # Written only if the job is still queued (a running one's worker sends it).
        events = finish_event(job, JobStatus.CANCELLED, error=CANCELLED_BY_REQUEST)
        cancelled = await self.store.request_cancel(job_id, events)
        if cancelled is None:
            raise JobNotFound(f"job '{job_id}' does not exist")
        return _unless_finished(cancelled)  # it may have finished since it was read

    async def deliveries(self, job_id: str) -> list[Delivery]:
        await self.get(job_id)
        return await self.store.list_deliveries(job_id)

    async def result(self, job_id: str) -> Any:
        job = await self.get(job_id)
        if job.status is not JobStatus.COMPLETED:
            raise JobNotFinished(f"job '{job_id}' is {job.status.value}, not COMPLETED")
        if job.result_ref is not None:
            return orjson.loads(await self.blobs.get(job.result_ref))
        return job.result


def _checked(document: Any, served: ServedVersion) -> CheckedRequest:
    inputs, body = parse_predict_json(document, served)
    inference = InferenceRequest(
        model=served.model,
        version=served.version,
        inputs=inputs,
        arrived_at=time.monotonic(),
        top_k=body.top_k,
        outputs=body.outputs,
    )
    return check(served, inference)


def _unless_finished(job: Job) -> Job:
    """The job, unless it finished otherwise than by a cancel: nothing to cancel."""
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise JobFinished(f"job '{job.id}' has already finished: {job.status.value}")
    return job


def check_metadata(metadata: Any) -> None:
    if metadata is not None and (
        not isinstance(metadata, dict) or len(orjson.dumps(metadata)) > MAX_METADATA_BYTES
    ):
        raise InvalidInput(f"metadata must be an object of at most {MAX_METADATA_BYTES} bytes")
