"""Routes of the asynchronous API: jobs, batches, pipelines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from modelplex import errors
from modelplex.api import payloads
from modelplex.api.openapi_docs import problem_responses
from modelplex.api.schemas import (
    BatchView,
    DeliveryList,
    JobList,
    JobSubmit,
    JobView,
    PipelineList,
)
from modelplex.errors import InvalidInput
from modelplex.jobs.batches import BatchService, batch_view
from modelplex.jobs.models import JobKind, JobStatus
from modelplex.jobs.service import JobService, SubmitRequest, delivery_view, job_view

router = APIRouter()

JSON = "application/json"
JSONL_TYPES = frozenset({"application/jsonl", "application/x-ndjson", "application/jsonlines"})
POLL_AFTER_S = "1"
_SUBMIT_FIELDS = frozenset(
    {"model", "pipeline", "version", "input", "callback_url", "callback_events", "priority",
     "metadata"}
)  # fmt: skip
_JOB_ERRORS = problem_responses(errors.InvalidInput, errors.NotFound, errors.Unavailable)


def _jobs(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


def _batches(request: Request) -> BatchService:
    service: BatchService = request.app.state.batches
    return service


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(payloads.dumps(document), status_code=status, media_type=JSON, headers=headers)


@router.post(
    "/v1/jobs",
    tags=["jobs"],
    status_code=202,
    response_model=JobView,
    summary="Submit a job (model or pipeline); 202 with its Location",
    responses=problem_responses(
        errors.InvalidInput,
        errors.NotFound,
        errors.IdempotencyConflict,
        errors.ModelNotReady,
        errors.PayloadTooLarge,
        errors.UnsupportedMediaType,
        errors.Unavailable,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/JobSubmit"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "`file` (e.g. a zip of images) plus the JSON fields as "
                        "form fields (`metadata` as JSON text, `callback_events` comma-separated).",
                    }
                },
            },
        },
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 200},
                "description": "Same key and same request: the same job. Same key, different "
                "request: 409 IDEMPOTENCY_CONFLICT.",
            },
        ],
    },
)
async def submit_job(request: Request) -> Response:
    media = payloads.media_type(request)
    if payloads.is_json(media):
        submit = await payloads.read_json(request, _submit_from_json)
    elif media == "multipart/form-data":
        submit = _submit_from_form(await payloads.read_form(request))
    else:
        raise payloads.unsupported(media)
    job, created = await _jobs(request).submit(submit, request.headers.get("idempotency-key"))
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(job_view(job), status=202, headers=headers)


def _target(body: dict[str, Any]) -> tuple[JobKind, str]:
    if ("model" in body) == ("pipeline" in body):
        raise InvalidInput("name exactly one of 'model' or 'pipeline'")
    kind = JobKind.MODEL if "model" in body else JobKind.PIPELINE
    name = body[kind.value]
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"'{kind.value}' must be a name")
    return kind, name


def _submit_from_json(body: Any) -> SubmitRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(body) - _SUBMIT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; expected {sorted(_SUBMIT_FIELDS)}")
    kind, target = _target(body)
    if "input" not in body:
        raise InvalidInput("'input' is required")
    events = body.get("callback_events") or []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise InvalidInput("callback_events must be a list of event names")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidInput("priority must be an integer")
    return SubmitRequest(
        kind=kind,
        target=target,
        input=body["input"],
        version=_opt_str(body.get("version"), "version"),
        callback_url=_opt_str(body.get("callback_url"), "callback_url"),
        callback_events=events,
        priority=priority,
        metadata=body.get("metadata"),
    )


def _submit_from_form(items: payloads.FormItems) -> SubmitRequest:
    fields: dict[str, str] = {}
    upload: bytes | None = None
    for field, value in items:
        if field == "file":
            if upload is not None or isinstance(value, str):
                raise InvalidInput("send one 'file' upload")
            upload = value
        elif field in _SUBMIT_FIELDS and isinstance(value, str) and field != "input":
            fields[field] = value
        else:
            raise InvalidInput(f"unknown form field '{field}'")
    if upload is None:
        raise InvalidInput("the form has no 'file'; send JSON for inputs without a file")
    kind, target = _target(dict(fields))
    try:
        priority = int(fields.get("priority", "0"))
        metadata = orjson.loads(fields["metadata"]) if "metadata" in fields else None
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidInput("priority must be an integer and metadata JSON") from None
    events = [e.strip() for e in fields.get("callback_events", "").split(",") if e.strip()]
    return SubmitRequest(
        kind=kind,
        target=target,
        upload=upload,
        version=fields.get("version") or None,
        callback_url=fields.get("callback_url") or None,
        callback_events=events,
        priority=priority,
        metadata=metadata,
    )


def _opt_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be a string")
    return value or None


@router.get(
    "/v1/jobs",
    tags=["jobs"],
    response_model=JobList,
    summary="List jobs, newest first, with cursor pagination",
    responses=problem_responses(errors.InvalidInput, errors.Unavailable),
)
async def list_jobs(
    request: Request,
    status: str | None = Query(
        None, description="QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED"
    ),
    model: str | None = Query(None, description="Jobs of this model or pipeline"),
    pipeline: str | None = Query(None, description="Same as model, for pipelines"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    try:
        wanted = JobStatus(status.upper()) if status else None
    except ValueError:
        raise InvalidInput(f"status must be one of {[s.value for s in JobStatus]}") from None
    jobs, next_cursor = await _jobs(request).list_jobs(
        status=wanted, target=model or pipeline, limit=limit, cursor=cursor
    )
    return _json({"jobs": [job_view(j) for j in jobs], "next_cursor": next_cursor})


@router.get(
    "/v1/jobs/{job_id}",
    tags=["jobs"],
    response_model=JobView,
    summary="A job: status, step progress, result or error (Retry-After while running)",
    responses=_JOB_ERRORS,
)
async def get_job(request: Request, job_id: str) -> Response:
    job = await _jobs(request).get(job_id)
    headers = None if job.status.finished else {"Retry-After": POLL_AFTER_S}
    return _json(job_view(job), headers=headers)


@router.get(
    "/v1/jobs/{job_id}/result",
    tags=["jobs"],
    summary="A completed job's result (however large)",
    responses=problem_responses(errors.NotFound, errors.JobNotFinished, errors.Unavailable),
)
async def get_job_result(request: Request, job_id: str) -> Response:
    return _json(await _jobs(request).result(job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    tags=["jobs"],
    response_model=JobView,
    summary="Cancel: a queued job at once, a running one at its next step boundary",
    responses=_JOB_ERRORS,
)
async def cancel_job(request: Request, job_id: str) -> Response:
    return _json(job_view(await _jobs(request).cancel(job_id)))


@router.get(
    "/v1/jobs/{job_id}/deliveries",
    tags=["jobs"],
    response_model=DeliveryList,
    summary="Webhook deliveries of a job, with every attempt",
    responses=_JOB_ERRORS,
)
async def job_deliveries(request: Request, job_id: str) -> Response:
    deliveries = await _jobs(request).deliveries(job_id)
    return _json({"deliveries": [delivery_view(d) for d in deliveries]})


@router.post(
    "/v1/batches",
    tags=["batches"],
    status_code=202,
    response_model=BatchView,
    summary="Submit a JSONL file of inputs (one {custom_id, input} per line)",
    responses=problem_responses(
        errors.InvalidInput,
        errors.NotFound,
        errors.ModelNotReady,
        errors.PayloadTooLarge,
        errors.UnsupportedMediaType,
        errors.Unavailable,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "`file` (JSONL), `model` or `pipeline`, optional "
                        "`version`, `options` (JSON: top_k, outputs), `metadata` (JSON).",
                    }
                },
                "application/jsonl": {
                    "schema": {"type": "string"},
                    "description": "The file itself; name the target with ?model= or ?pipeline=.",
                },
            },
        }
    },
)
async def submit_batch(request: Request) -> Response:
    media = payloads.media_type(request)
    if media in JSONL_TYPES:
        fields = dict(request.query_params)
        content = await request.body()
    elif media == "multipart/form-data":
        fields, content = _batch_form(await payloads.read_form(request))
    else:
        raise errors.UnsupportedMediaType(
            f"content type '{media or '(none)'}' is not supported; send multipart/form-data "
            "with a 'file', or the file as application/jsonl"
        )
    unknown = sorted(set(fields) - {"model", "pipeline", "version", "options", "metadata"})
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}")
    kind, target = _target(fields)
    try:
        options = orjson.loads(fields["options"]) if fields.get("options") else None
        metadata = orjson.loads(fields["metadata"]) if fields.get("metadata") else None
    except orjson.JSONDecodeError:
        raise InvalidInput("options and metadata must be JSON") from None
    batch = await _batches(request).create(
        content,
        kind=kind,
        target=target,
        version=fields.get("version") or None,
        options=options,
        metadata=metadata,
    )
    return _json(batch_view(batch), status=202, headers={"Location": f"/v1/batches/{batch.id}"})


def _batch_form(items: payloads.FormItems) -> tuple[dict[str, str], bytes]:
    fields: dict[str, str] = {}
    content: bytes | None = None
    for field, value in items:
        if field == "file" and isinstance(value, bytes) and content is None:
            content = value
        elif isinstance(value, str) and field not in fields:
            fields[field] = value
        else:
            raise InvalidInput(f"unexpected form field '{field}'")
    if content is None:
        raise InvalidInput("the form has no 'file'")
    return fields, content


@router.get(
    "/v1/batches/{batch_id}",
    tags=["batches"],
    response_model=BatchView,
    summary="A batch: counts and progress",
    responses=_JOB_ERRORS,
)
async def get_batch(request: Request, batch_id: str) -> Response:
    batch = await _batches(request).get(batch_id)
    headers = None if batch.finished_at else {"Retry-After": POLL_AFTER_S}
    return _json(batch_view(batch), headers=headers)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    tags=["batches"],
    response_model=BatchView,
    summary="Cancel a batch's remaining chunks",
    responses=_JOB_ERRORS,
)
async def cancel_batch(request: Request, batch_id: str) -> Response:
    return _json(batch_view(await _batches(request).cancel(batch_id)))


@router.get(
    "/v1/batches/{batch_id}/results",
    tags=["batches"],
    summary="Results so far as JSONL: {custom_id, output} per line",
    responses=_JOB_ERRORS,
)
async def batch_results(request: Request, batch_id: str) -> Response:
    return await _jsonl(_batches(request), batch_id, errors=False)


@router.get(
    "/v1/batches/{batch_id}/errors",
    tags=["batches"],
    summary="Failed lines so far as JSONL: {custom_id, error: {code, message}} per line",
    responses=_JOB_ERRORS,
)
async def batch_errors(request: Request, batch_id: str) -> Response:
    return await _jsonl(_batches(request), batch_id, errors=True)


async def _jsonl(service: BatchService, batch_id: str, *, errors: bool) -> Response:
    await service.get(batch_id)  # a 404 must come before the stream starts

    async def body() -> AsyncIterator[bytes]:
        async for line in service.lines(batch_id, errors=errors):
            yield line

    return StreamingResponse(body(), media_type="application/jsonl")


@router.get("/v1/pipelines", tags=["jobs"], response_model=PipelineList, summary="List pipelines")
async def list_pipelines(request: Request) -> Response:
    return _json({"pipelines": [p.describe() for p in _jobs(request).pipelines.all()]})


REQUEST_SCHEMAS = (JobSubmit,)
