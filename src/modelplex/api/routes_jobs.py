"""Routes of the asynchronous API: jobs, batches, pipelines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from modelplex import errors
from modelplex.api import payloads
from modelplex.api.bodies import BatchFields, BatchForm, JobSubmit, JobSubmitForm
from modelplex.api.deps import modelplex_of
from modelplex.api.openapi_docs import (
    json_content,
    problem_responses,
    query_parameters,
    schema_ref,
)
from modelplex.api.schemas import (
    BatchList,
    BatchView,
    DeliveryList,
    JobList,
    JobView,
    PipelineList,
    PipelineView,
)
from modelplex.api.views import REFUSALS_SHOWN, batch_view, delivery_view, job_view
from modelplex.auth.access import principal_of, require_model
from modelplex.auth.principal import Principal
from modelplex.core.envelopes import parse
from modelplex.jobs.batches import BatchService
from modelplex.jobs.service import BytesUpload, JobService, SubmitRequest, Upload
from modelplex.records import BatchStatus, JobStatus

router = APIRouter()

JSON = "application/json"
JSONL_TYPES = frozenset({"application/jsonl", "application/x-ndjson", "application/jsonlines"})
POLL_AFTER_S = "1"
_READ_BYTES = 256 * 1024
_SUBMIT_ERRORS = (
    errors.InvalidInput, errors.NotFound, errors.ModelNotReady, errors.PayloadTooLarge,
    errors.UnsupportedMediaType, errors.Unavailable,
)  # fmt: skip
_JOB_ERRORS = problem_responses(errors.InvalidInput, errors.NotFound, errors.Unavailable)


def _jobs(request: Request) -> JobService:
    return modelplex_of(request).jobs


def _batches(request: Request) -> BatchService:
    return modelplex_of(request).batches


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(payloads.dumps(document), status_code=status, media_type=JSON, headers=headers)


@router.post(
    "/v1/jobs",
    tags=["jobs"],
    status_code=202,
    response_model=JobView,
    summary="Submit a job (model or pipeline); 202 with its Location",
    responses=problem_responses(*_SUBMIT_ERRORS, errors.IdempotencyConflict),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: schema_ref("JobSubmit"),
                "multipart/form-data": schema_ref("JobSubmitForm"),
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
    key = request.headers.get("idempotency-key")
    if payloads.is_json(media):
        body = await payloads.read_json(request, lambda doc: parse(JobSubmit, doc))
        job, created = await _jobs(request).submit(
            _submit(body, principal_of(request.scope), input=body.input), key
        )
    elif media == "multipart/form-data":
        # The file stays in the form's spooled temporary file, which is copied to
        # the blob store in chunks before the form is closed.
        async with payloads.open_form(request) as items:
            fields, upload = _file_apart(payloads.form_document(items))
            form = parse(JobSubmitForm, fields, "the form")
            job, created = await _jobs(request).submit(
                _submit(form, principal_of(request.scope), upload=upload), key
            )
    else:
        raise payloads.unsupported(media)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(job_view(job), status=202, headers=headers)


def _file_apart(
    fields: dict[str, str | UploadFile],
) -> tuple[dict[str, str | bytes], Upload | None]:
    """The form's fields for its envelope (the file as an empty placeholder, so that
    the envelope still says it is required), and the file itself."""
    document: dict[str, str | bytes] = {}
    upload: Upload | None = None
    for name, value in fields.items():
        if name == "file":
            upload = value if isinstance(value, UploadFile) else BytesUpload(value.encode())
            document[name] = b""
        else:  # a file under another name is an unknown field: the envelope says so
            document[name] = b"" if isinstance(value, UploadFile) else value
    return document, upload


def _submit(
    body: JobSubmit | JobSubmitForm,
    principal: Principal,
    *,
    input: Any = None,
    upload: Upload | None = None,
) -> SubmitRequest:
    kind, target = body.target
    require_model(principal, target, body.version or None)
    return SubmitRequest(
        kind=kind,
        target=target,
        input=input,
        upload=upload,
        version=body.version or None,
        callback_url=body.callback_url or None,
        callback_events=list(body.callback_events),
        priority=body.priority,
        metadata=body.metadata,
    )


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
    wanted = payloads.status_filter(status, JobStatus, [s.value for s in JobStatus])
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
    summary="Cancel: a queued job at once (200, CANCELLED); a running one at its next step "
    "boundary or cancellation check (202, cancel_requested: it ends CANCELLED)",
    responses={
        202: {"description": "Running: it stops and ends CANCELLED", **json_content("JobView")},
        **problem_responses(errors.NotFound, errors.JobFinished, errors.Unavailable),
    },
)
async def cancel_job(request: Request, job_id: str) -> Response:
    job = await _jobs(request).cancel(job_id)
    return _json(job_view(job), status=200 if job.status.finished else 202)


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
    responses=problem_responses(*_SUBMIT_ERRORS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A multipart form with the file, or the file itself as "
            "application/jsonl with the same fields as query parameters.",
            "content": {
                "multipart/form-data": schema_ref("BatchForm"),
                "application/jsonl": {"schema": {"type": "string"}},
            },
        },
        "parameters": query_parameters(BatchFields),
    },
)
async def submit_batch(request: Request) -> Response:
    # The file is read as it comes (a form's file from its spooled temporary file),
    # never held whole: the service parses and stores it a block at a time.
    media = payloads.media_type(request)
    if media in JSONL_TYPES:
        fields = parse(BatchFields, dict(request.query_params), "the query")
        return await _create_batch(request, fields, request.stream())
    if media == "multipart/form-data":
        async with payloads.open_form(request) as items:
            document = payloads.form_document(items)
            file = document.pop("file", None)
            if file is None:
                parse(BatchForm, document)  # says what is missing, as for any form
            fields = parse(BatchFields, document)
            upload = file.encode() if isinstance(file, str) else file
            return await _create_batch(request, fields, _read_upload(upload))
    raise errors.UnsupportedMediaType(
        f"content type '{media or '(none)'}' is not supported; send multipart/form-data "
        "with a 'file', or the file as application/jsonl"
    )


async def _create_batch(
    request: Request, fields: BatchFields, content: AsyncIterator[bytes]
) -> Response:
    kind, target = fields.target
    require_model(principal_of(request.scope), target, fields.version or None)
    options = fields.options.model_dump(exclude_none=True) if fields.options else None
    batch = await _batches(request).create(
        content,
        kind=kind,
        target=target,
        version=fields.version,
        options=options or None,
        metadata=fields.metadata,
    )
    return _json(batch_view(batch), status=202, headers={"Location": f"/v1/batches/{batch.id}"})


async def _read_upload(upload: UploadFile | bytes | None) -> AsyncIterator[bytes]:
    if isinstance(upload, bytes):
        yield upload
        return
    while upload is not None and (data := await upload.read(_READ_BYTES)):
        yield data


_LISTED_BATCH_STATES = [s.value for s in BatchStatus if s is not BatchStatus.CREATING]


@router.get(
    "/v1/batches",
    tags=["batches"],
    response_model=BatchList,
    summary="List batches, newest first, with cursor pagination",
    responses=problem_responses(errors.InvalidInput, errors.Unavailable),
)
async def list_batches(
    request: Request,
    status: str | None = Query(None, description=", ".join(_LISTED_BATCH_STATES)),
    model: str | None = Query(None, description="Batches of this model or pipeline"),
    pipeline: str | None = Query(None, description="Same as model, for pipelines"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    wanted = payloads.status_filter(status, BatchStatus, _LISTED_BATCH_STATES)
    found, next_cursor = await _batches(request).list_batches(
        status=wanted, target=model or pipeline, limit=limit, cursor=cursor
    )
    return _json({"batches": [batch_view(b) for b in found], "next_cursor": next_cursor})


@router.get(
    "/v1/batches/{batch_id}",
    tags=["batches"],
    response_model=BatchView,
    summary="A batch: counts and progress",
    responses=_JOB_ERRORS,
)
async def get_batch(request: Request, batch_id: str) -> Response:
    batch, refusals = await _batches(request).get_with_refusals(batch_id, REFUSALS_SHOWN)
    headers = None if batch.finished_at else {"Retry-After": POLL_AFTER_S}
    return _json(batch_view(batch, refusals), headers=headers)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    tags=["batches"],
    response_model=BatchView,
    summary="Cancel a batch: lines not started end CANCELLED, running ones stop at once",
    responses=problem_responses(errors.NotFound, errors.JobFinished, errors.Unavailable),
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


@router.get(
    "/v1/pipelines",
    tags=["jobs"],
    response_model=PipelineList,
    summary="List pipelines: steps, state, and the input each takes",
)
async def list_pipelines(request: Request) -> Response:
    return _json({"pipelines": [p.describe() for p in _jobs(request).pipelines.all()]})


@router.get(
    "/v1/pipelines/{pipeline}",
    tags=["jobs"],
    response_model=PipelineView,
    summary="A pipeline: steps, state, and the input it takes",
    responses=problem_responses(errors.PipelineNotFound),
)
async def get_pipeline(request: Request, pipeline: str) -> Response:
    return _json(_jobs(request).pipelines.get(pipeline).describe())


REQUEST_SCHEMAS = (JobSubmit, JobSubmitForm, BatchForm, BatchFields)
