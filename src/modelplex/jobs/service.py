"""The jobs API's core: submit, look up, list, cancel. Knows no HTTP."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from modelplex.core.instances import parse_predict_json
from modelplex.core.registry import ModelRegistry, ModelState
from modelplex.errors import (
    IdempotencyConflict,
    InvalidInput,
    JobNotFinished,
    JobNotFound,
    ModelNotReady,
    VersionNotFound,
)
from modelplex.jobs.models import Delivery, Job, JobKind, JobStatus, NewDelivery, NewJob
from modelplex.jobs.pipelines import PipelineRegistry, PipelineState
from modelplex.jobs.runner import STEP_EVENT
from modelplex.jobs.webhooks import check_callback_url, event_payload
from modelplex.settings import Settings
from modelplex.storage.blobs import BlobStore
from modelplex.storage.jobstore import DuplicateKey, SqlJobStore

CALLBACK_EVENTS = frozenset({STEP_EVENT})
MAX_METADATA_BYTES = 16 * 1024
MAX_PRIORITY = 100
INFERENCE_STEP = "inference"


@dataclass
class SubmitRequest:
    kind: JobKind
    target: str
    input: Any = None
    upload: bytes | None = None
    """An uploaded file (a zip archive for album-tagging), stored as a blob."""
    upload_name: str | None = None
    version: str | None = None
    callback_url: str | None = None
    callback_events: list[str] = field(default_factory=list)
    priority: int = 0
    metadata: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """Same request, same fingerprint: what an idempotency key is compared on."""
        canonical = orjson.dumps(
            {
                "kind": self.kind.value,
                "target": self.target,
                "version": self.version,
                "input": self.input,
                "upload": hashlib.sha256(self.upload).hexdigest() if self.upload else None,
                "callback_url": self.callback_url,
                "callback_events": sorted(self.callback_events),
                "priority": self.priority,
                "metadata": self.metadata,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()


class JobService:
    def __init__(
        self,
        store: SqlJobStore,
        blobs: BlobStore,
        models: ModelRegistry,
        pipelines: PipelineRegistry,
        settings: Settings,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.models = models
        self.pipelines = pipelines
        self.settings = settings

    async def submit(
        self, request: SubmitRequest, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """The job for this request: created (True), or the one an earlier
        request with the same idempotency key created (False)."""
        fingerprint = request.fingerprint()
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise InvalidInput("Idempotency-Key must be 1 to 200 characters")
            existing = await self.store.get_by_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, fingerprint), False
        steps, max_attempts = await self._validate(request)
        new = NewJob(
            kind=request.kind,
            target=request.target,
            version=request.version,
            max_attempts=max_attempts,
            steps=steps,
            priority=request.priority,
            metadata=request.metadata,
            callback_url=request.callback_url,
            callback_events=request.callback_events,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
        )
        new.input, new.input_ref, new.upload_ref = await self._store_input(request)
        try:
            return await self.store.create(new), True
        except DuplicateKey as duplicate:  # a concurrent request with the same key won
            return self._replay(duplicate.existing, fingerprint), False

    @staticmethod
    def _replay(existing: Job, fingerprint: str) -> Job:
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key was used for job {existing.id} with a different request"
            )
        return existing

    async def _validate(self, request: SubmitRequest) -> tuple[list[str], int]:
        if not -MAX_PRIORITY <= request.priority <= MAX_PRIORITY:
            raise InvalidInput(f"priority must be from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        check_metadata(request.metadata)
        unknown = sorted(set(request.callback_events) - CALLBACK_EVENTS)
        if unknown:
            raise InvalidInput(
                f"unknown callback_events {unknown}; completion, failure and cancellation "
                f"are always sent; optional: {sorted(CALLBACK_EVENTS)}"
            )
        if request.callback_url is not None:
            await check_callback_url(request.callback_url, self.settings.webhook_allow_private)
        elif request.callback_events:
            raise InvalidInput("callback_events needs a callback_url")
        if request.kind is JobKind.MODEL:
            self.check_model(request.target, request.version, request.input)
            return [INFERENCE_STEP], self.settings.job_max_attempts
        pipeline = self.pipelines.get(request.target)
        if pipeline.state is not PipelineState.READY or pipeline.config is None:
            raise ModelNotReady(f"pipeline '{request.target}' is not ready: {pipeline.reason}")
        if request.upload is None and not isinstance(request.input, dict):
            raise InvalidInput("a pipeline's input must be a JSON object")
        return pipeline.step_names, pipeline.config.max_attempts or self.settings.job_max_attempts

    def check_model(self, model: str, version: str | None, body: Any) -> None:
        """Refuse at submission what would certainly fail: unknown model or version,
        a model that is not serving, a body that does not fit its signature."""
        entry = self.models.entry(model)
        if version is not None and version not in entry.versions and version not in entry.failures:
            raise VersionNotFound(f"model '{model}' has no version '{version}'")
        if entry.state is not ModelState.READY and version is None:
            raise ModelNotReady(f"model '{model}' is not ready: {entry.reason}")
        if body is not None:
            parse_predict_json(body, self.models.get(model, version))

    async def _store_input(self, request: SubmitRequest) -> tuple[Any, str | None, str | None]:
        """(inline input, blob of a large input, blob of an uploaded file). Blob
        references are the server's own: nothing a client sends can name one."""
        if request.upload is not None:
            upload = await self.blobs.put(request.upload)
            return {"upload": {"filename": request.upload_name}}, None, upload
        encoded = orjson.dumps(request.input)
        if len(encoded) > self.settings.blob_threshold_bytes:
            return None, await self.blobs.put(encoded), None
        return request.input, None, None

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
        job = await self.get(job_id)
        if job.status.finished:
            return job
        events = []
        if job.callback_url:
            data = {"id": job.id, "status": JobStatus.CANCELLED.value, "metadata": job.metadata}
            events.append(
                NewDelivery("job.cancelled", job.callback_url, event_payload("job.cancelled", data))
            )
        cancelled = await self.store.request_cancel(job_id, events)
        if cancelled is None:
            raise JobNotFound(f"job '{job_id}' does not exist")
        return cancelled

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


def check_metadata(metadata: Any) -> None:
    if metadata is not None and (
        not isinstance(metadata, dict) or len(orjson.dumps(metadata)) > MAX_METADATA_BYTES
    ):
        raise InvalidInput(f"metadata must be an object of at most {MAX_METADATA_BYTES} bytes")


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    view: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        job.kind.value if job.kind is not JobKind.BATCH_CHUNK else "batch_chunk": job.target,
        "version": job.version,
        "priority": job.priority,
        "progress": job.progress,
        "steps": [
            {
                **step,
                "started_at": iso(step.get("started_at")),
                "finished_at": iso(step.get("finished_at")),
            }
            for step in job.steps
        ],
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "metadata": job.metadata,
        "callback_url": job.callback_url,
        "callback_events": job.callback_events,
        "history": [
            {**h, "started_at": iso(h.get("started_at")), "finished_at": iso(h.get("finished_at"))}
            for h in job.history
        ],
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "cancel": f"/v1/jobs/{job.id}/cancel",
            "deliveries": f"/v1/jobs/{job.id}/deliveries",
            "result": f"/v1/jobs/{job.id}/result",
        },
    }
    if job.batch_id:
        view["batch_id"] = job.batch_id
    if job.status is JobStatus.COMPLETED:
        view["result"] = job.result if job.result_ref is None else None
        view["result_in_blob"] = job.result_ref is not None
    if job.error and job.status is not JobStatus.COMPLETED:
        view["error"] = job.error
    return view


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event": delivery.event,
        "url": delivery.url,
        "status": delivery.status.value,
        "created_at": iso(delivery.created_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "PENDING" else None,
        "attempts": [{**a, "at": iso(a.get("at"))} for a in delivery.attempts],
    }
