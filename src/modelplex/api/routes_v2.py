"""The Open Inference Protocol over REST (`/v2`), with Triton's binary tensor extension.

Errors on these routes are the protocol's `{"error": "..."}` with the status
the one error table gives for the protocol (`problems.error_response`): 400
for invalid input, 404 for an unknown model or version. Readiness answers 200
or, as the protocol says, a 4xx (400) when not ready.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplex import errors
from modelplex.api import v2_wire
from modelplex.api.deps import json_limits_of, modelplex_of
from modelplex.api.openapi_docs import (
    PARAMS,
    V2_HEADERS,
    V2_INFER_BODY,
    Responses,
    json_content,
    no_content,
    optional_json_body,
    v2_errors,
)
from modelplex.api.payloads import dumps
from modelplex.api.problems import answer_directly
from modelplex.api.routes_v1 import timeout_ms
from modelplex.api.v2_schemas import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2LoadRequest,
    V2ModelMetadata,
    V2RepositoryIndexRequest,
    V2RepositoryModel,
    V2ServerMetadata,
)
from modelplex.core import jsonlimits, offload
from modelplex.core.envelopes import parse
from modelplex.oip.service import V2Request, V2Service

router = APIRouter(tags=["open inference protocol (v2)"])

HEADER_LENGTH = "inference-header-content-length"
NOT_READY = 400
"""The protocol: "a 200 status code indicates true and a 4xx status code indicates false"."""
_LOOKUP = v2_errors(errors.ModelNotFound, errors.VersionNotFound)
_READY: Responses = {
    200: no_content("Ready"),
    NOT_READY: {"description": "Not ready", **json_content("V2Error")},
}
_INFER_ERRORS = v2_errors(
    errors.InvalidInput, errors.ModelNotFound, errors.PayloadTooLarge,
    errors.UnsupportedMediaType, errors.ModelNotReady, errors.InferenceTimeout,
    errors.InternalError,
)  # fmt: skip
REQUEST_SCHEMAS = (V2Error, V2InferRequest, V2RepositoryIndexRequest, V2LoadRequest)


def _service(request: Request) -> V2Service:
    return modelplex_of(request).v2


def _json(document: Any, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")


def _not_ready(message: str) -> Response:
    return _json({"error": message}, status=NOT_READY)


@router.get("/v2", summary="Server metadata", response_model=V2ServerMetadata)
@router.get(
    "/v2/", summary="Server metadata (the protocol's spelling)", response_model=V2ServerMetadata
)
async def server_metadata(request: Request) -> Response:
    return _json(_service(request).server_metadata())


@router.get(
    "/v2/health/live", summary="Server liveness", response_class=Response,
    responses={200: no_content("Live")},
)  # fmt: skip
async def server_live() -> Response:
    return Response(status_code=200)


@router.get(
    "/v2/health/ready",
    summary="Server readiness (the readiness policy of /readyz)",
    response_class=Response,
    responses=_READY,
)
async def server_ready(request: Request) -> Response:
    problem = _service(request).readiness_problem()
    if problem is not None:
        return _not_ready(problem)
    return Response(status_code=200)


@router.get("/v2/models/stats", summary="Statistics of every model version (Triton's shape)")
async def all_statistics(request: Request) -> Response:
    return _json(_service(request).model_statistics(None, None))


@router.get(
    "/v2/models/{model}", summary="Model metadata", response_model=V2ModelMetadata,
    responses=v2_errors(errors.ModelNotFound, errors.ModelNotReady),
)  # fmt: skip
@router.get(
    "/v2/models/{model}/versions/{version}", summary="Model version metadata",
    response_model=V2ModelMetadata,
    responses=v2_errors(errors.ModelNotFound, errors.VersionNotFound, errors.ModelNotReady),
)  # fmt: skip
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_metadata(model, version or None))


@router.get(
    "/v2/models/{model}/ready", summary="Model readiness", response_class=Response,
    responses=_READY | _LOOKUP,
)  # fmt: skip
@router.get(
    "/v2/models/{model}/versions/{version}/ready",
    summary="Model version readiness (404 for a version the model does not have)",
    response_class=Response,
    responses=_READY | _LOOKUP,
)
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    if not _service(request).model_ready(model, version or None):
        return _not_ready(f"model '{model}' is not ready")
    return Response(status_code=200)


@router.get(
    "/v2/models/{model}/config", summary="Model configuration (Triton's shape)",
    responses=v2_errors(errors.ModelNotFound, errors.ModelNotReady),
)  # fmt: skip
@router.get(
    "/v2/models/{model}/versions/{version}/config", summary="Model version configuration",
    responses=v2_errors(errors.ModelNotFound, errors.VersionNotFound, errors.ModelNotReady),
)  # fmt: skip
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_config(model, version or None))


@router.get(
    "/v2/models/{model}/stats", summary="Model statistics (Triton's shape)", responses=_LOOKUP
)
@router.get(
    "/v2/models/{model}/versions/{version}/stats", summary="Model version statistics",
    responses=_LOOKUP,
)  # fmt: skip
async def model_statistics(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_statistics(model, version or None))


@router.post(
    "/v2/models/{model}/infer",
    summary="Inference (JSON or binary tensor data)",
    response_model=V2InferResponse,
    responses=_INFER_ERRORS,
    openapi_extra={"parameters": [*PARAMS["model_path"], *V2_HEADERS], **V2_INFER_BODY},
)
@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    summary="Inference with a version",
    response_model=V2InferResponse,
    responses=_INFER_ERRORS,
    openapi_extra={"parameters": [*PARAMS["model_version_path"], *V2_HEADERS], **V2_INFER_BODY},
)
async def infer(request: Request) -> Response:
    """Path parameters are read from the request: declaring them as arguments costs
    FastAPI's parameter machinery a measurable share of a small model's request."""
    arrived = time.monotonic()
    settings = modelplex_of(request).settings
    body = await v2_wire.decoded_body(
        await request.body(), request.headers.get("content-encoding", ""),
        settings.max_request_bytes,
    )  # fmt: skip
    document, inputs = await v2_wire.parse_infer(
        body,
        request.headers.get(HEADER_LENGTH),
        json_limits_of(request),
        settings.max_tensor_elements,
    )
    parameters = document.parameters or {}
    v2_request = V2Request(
        model=request.path_params["model"],
        version=request.path_params.get("version") or None,
        inputs=inputs,
        outputs=v2_wire.requested_outputs(document),
        id=document.id,
        parameters=parameters,
        timeout_ms=timeout_ms(request, settings),
        arrived_at=arrived,
    )
    binary_all = v2_wire.flag(parameters, "binary_data_output", "request")
    response = await _service(request).infer(v2_request)
    content, json_length = await v2_wire.encoded(response, binary_all)
    headers = {"X-Model-Name": response.model, "X-Model-Version": response.version}
    media = "application/json"
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
        media = "application/octet-stream"
    encoding = v2_wire.accepted_encoding(request.headers.get("accept-encoding", ""))
    if encoding and len(content) > v2_wire.COMPRESS_ABOVE:
        content = await offload.cpu_bound(v2_wire.compress, content, encoding)
        headers["Content-Encoding"] = encoding
    return Response(content, media_type=media, headers=headers)


_MODELS, _INFER, _VERSIONS = "/v2/models/", "/infer", "/versions/"


def infer_shortcut(scope: Scope) -> ASGIApp | None:
    """`POST /v2/models/{model}[/versions/{version}]/infer` past FastAPI's router
    (as `routes_v1.predict_shortcut`); None for anything else."""
    path: str = scope["path"]
    if scope["method"] != "POST" or not path.startswith(_MODELS) or not path.endswith(_INFER):
        return None
    model, versioned, version = path[len(_MODELS) : -len(_INFER)].partition(_VERSIONS)
    if not model or "/" in model or "/" in version or (versioned and not version):
        return None
    scope["path_params"] = {"model": model, "version": version} if version else {"model": model}
    return _infer_app


async def _infer_app(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    await answer_directly(lambda: infer(request), scope, receive, send)


@router.post(
    "/v2/repository/index",
    summary="Models in the repository and their state",
    response_model=list[V2RepositoryModel],
    responses=v2_errors(errors.InvalidInput),
    openapi_extra=optional_json_body("V2RepositoryIndexRequest"),
)
async def repository_index(request: Request) -> Response:
    body = await request.body()
    ready = False
    if body.strip():
        document = jsonlimits.loads(body, json_limits_of(request))
        ready = parse(V2RepositoryIndexRequest, document).ready
    return _json(_service(request).repository_index(ready))


@router.post(
    "/v2/repository/models/{model}/load",
    summary="Load, or load again, a model from its folder (new versions without a restart)",
    response_class=Response,
    responses={
        200: no_content("Loaded"),
        # Loads run a few at a time; one more is refused at once, not queued.
        **v2_errors(
            errors.InvalidInput,
            errors.ModelLoadError,
            errors.ModelNotFound,
            errors.ResourceExhausted,
        ),
    },
    openapi_extra=optional_json_body("V2LoadRequest"),
)
async def repository_load(request: Request, model: str) -> Response:
    body = await request.body()
    parameters: dict[str, Any] = {}
    if body.strip():
        document = jsonlimits.loads(body, json_limits_of(request))
        parameters = parse(V2LoadRequest, document).parameters or {}
    await _service(request).load(model, parameters)
    return Response(status_code=200)


@router.post(
    "/v2/repository/models/{model}/unload",
    summary="Stop serving a model",
    response_class=Response,
    responses={200: no_content("Unloaded"), **_LOOKUP},
)
async def repository_unload(request: Request, model: str) -> Response:
    await _service(request).unload(model)
    return Response(status_code=200)
