"""Every route of the native API (health and /v1), in one screen.

Routes translate HTTP into data-plane calls and back; they raise domain errors
and never build error responses themselves (see `modelplex.api.problems`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelplex.api import payloads
from modelplex.api.problems import request_id_of
from modelplex.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    Health,
    ModelDetail,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelEntry, ModelState, ServedVersion, version_sort_key
from modelplex.core.types import InferenceRequest
from modelplex.errors import InternalError, InvalidInput
from modelplex.settings import Settings

JSON = "application/json"

PREDICT_ERRORS = (413, 415, 422, 404, 503, 504, 500)
TIMEOUT_HEADER = "x-request-timeout-ms"


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": "Problem details (application/problem+json)",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }


def _body_doc(*schemas: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for schema in schemas:
        if schema == "multipart":
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "description": "One file field per BYTES input (repeat for more instances); "
                    "optional `top_k`.",
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            }
        else:
            content[JSON] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    return {"requestBody": {"required": True, "content": content}}


def _path_doc(*names: str) -> list[dict[str, Any]]:
    """Path parameters of hot routes, which read `request.path_params` themselves:
    declaring them as arguments costs FastAPI's parameter machinery ~8% of a
    small model's request."""
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


_DETAIL_HEADERS = [
    {
        "name": "X-Response-Detail",
        "in": "header",
        "required": False,
        "schema": {
            "type": "string",
            "enum": ["minimal", "standard", "verbose"],
            "default": "standard",
        },
        "description": "minimal: predictions only; verbose: timing breakdown, batch size, "
        "input shape and model version details.",
    },
    {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "Deadline for this request; the model's own timeout still applies.",
    },
]


def build_router(dataplane: DataPlane, settings: Settings) -> APIRouter:
    router = APIRouter()
    registry = dataplane.registry

    @router.get("/healthz", tags=["health"], response_model=Health, summary="Liveness")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @router.get(
        "/readyz",
        tags=["health"],
        response_model=Health,
        summary="Readiness: 200 once every model folder has been loaded (or failed)",
        responses={503: {"description": "Still loading", "model": Health}},
    )
    async def readyz() -> Response:
        entries = registry.entries()
        models = {
            "ready": [e.name for e in entries if e.state is ModelState.READY],
            "failed": {e.name: e.reason for e in entries if e.state is ModelState.FAILED},
        }
        if not registry.loaded.is_set():
            return _json({"status": "loading", "models": models}, status=503)
        return _json({"status": "ready", "models": models})

    @router.get("/v1/models", tags=["models"], response_model=ModelList, summary="List models")
    async def list_models() -> Response:
        return _json({"models": [_summary(e) for e in registry.entries()]})

    @router.get(
        "/v1/models/{model}",
        tags=["models"],
        response_model=ModelDetail,
        summary="A model: versions, state, signature, labels, batching settings",
        responses=_problem_responses(404),
    )
    async def get_model(model: str) -> Response:
        return _json(_detail(registry.entry(model)))

    async def predict(request: Request, model: str, version: str | None) -> Response:
        arrived = time.monotonic()
        detail = payloads.Detail.from_header(request.headers.get("x-response-detail"))
        timeout_ms = _timeout_ms(request, settings)
        served = dataplane.resolve(model, version)
        media = payloads.media_type(request)
        decode_start = time.perf_counter()
        if payloads.is_json(media):
            body = await payloads.read_json(request)
            inputs, options = payloads.parse_predict_json(body, served)
        elif media == "multipart/form-data":
            items = await payloads.read_form(request)
            inputs, options = payloads.parse_predict_form(items, served)
        else:
            raise payloads.unsupported(media)
        inference = InferenceRequest(
            model=model,
            version=served.version,
            inputs=inputs,
            arrived_at=arrived,
            request_id=request_id_of(request.scope),
            timeout_ms=timeout_ms,
            top_k=options.top_k,
            outputs=options.outputs,
        )
        inference.timings.decode_s = time.perf_counter() - decode_start
        result = await dataplane.infer(inference)
        predictions = payloads.instance_predictions(result, options.top_k)
        body_out = payloads.render(
            result, predictions, detail, inference.request_id, arrived, served
        )
        return _prediction_response(body_out, served)

    @router.post(
        "/v1/models/{model}/predict",
        tags=["inference"],
        summary="Predict with the model's default version",
        response_model=PredictResponse,
        responses=_problem_responses(*PREDICT_ERRORS),
        openapi_extra={
            **_body_doc("PredictRequest", "multipart"),
            "parameters": [*_path_doc("model"), *_DETAIL_HEADERS],
        },
    )
    async def predict_default(request: Request) -> Response:
        return await predict(request, request.path_params["model"], None)

    @router.post(
        "/v1/models/{model}/versions/{version}/predict",
        tags=["inference"],
        summary="Predict with one version of a model",
        response_model=PredictResponse,
        responses=_problem_responses(*PREDICT_ERRORS),
        openapi_extra={
            **_body_doc("PredictRequest", "multipart"),
            "parameters": [*_path_doc("model", "version"), *_DETAIL_HEADERS],
        },
    )
    async def predict_version(request: Request) -> Response:
        params = request.path_params
        return await predict(request, params["model"], params["version"])

    @router.post(
        "/v1/classify",
        tags=["inference"],
        summary="Classify one image (multipart field `image`, or JSON with base64)",
        response_model=ClassifyResponse,
        responses=_problem_responses(*PREDICT_ERRORS),
        openapi_extra={
            **_body_doc("ClassifyRequest"),
            "parameters": _DETAIL_HEADERS,
        },
    )
    async def classify(request: Request) -> Response:
        arrived = time.monotonic()
        detail = payloads.Detail.from_header(request.headers.get("x-response-detail"))
        timeout_ms = _timeout_ms(request, settings)
        media = payloads.media_type(request)
        decode_start = time.perf_counter()
        if payloads.is_json(media):
            options = payloads.parse_classify_json(await payloads.read_json(request))
        elif media == "multipart/form-data":
            options = payloads.parse_classify_form(await payloads.read_form(request))
        else:
            raise payloads.unsupported(media)
        model = options.model or settings.classify_model
        served = dataplane.resolve(model, options.version)
        if served.classifier is None or served.preprocessor is None:
            raise InvalidInput(f"model '{model}' is not an image classifier")
        image_input = served.config.preprocessing.input if served.config.preprocessing else ""
        images = np.empty(1, dtype=object)
        images[0] = options.image
        inference = InferenceRequest(
            model=model,
            version=served.version,
            inputs={image_input: images},
            arrived_at=arrived,
            request_id=request_id_of(request.scope),
            timeout_ms=timeout_ms,
            top_k=options.top_k,
        )
        inference.timings.decode_s = time.perf_counter() - decode_start
        result = await dataplane.infer(inference)
        if result.classes is None:
            raise InternalError(f"model '{model}' returned no classes")
        predictions = [payloads.class_json(s) for s in result.classes[0]]
        body_out = payloads.render(
            result, predictions, detail, inference.request_id, arrived, served
        )
        return _prediction_response(body_out, served)

    return router


# Documented here, parsed by hand in the routes above (see schemas.py).
REQUEST_SCHEMAS = (PredictRequest, ClassifyRequest)


def _json(document: Any, status: int = 200) -> Response:
    return Response(payloads.dumps(document), status_code=status, media_type=JSON)


def _prediction_response(body: bytes, served: ServedVersion) -> Response:
    return Response(
        body,
        media_type=JSON,
        headers={"X-Model-Name": served.model, "X-Model-Version": served.version},
    )


def _timeout_ms(request: Request, settings: Settings) -> int | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= settings.max_request_timeout_ms:
        raise InvalidInput(
            f"X-Request-Timeout-Ms must be an integer from 1 to {settings.max_request_timeout_ms}"
        )
    return value


def _summary(entry: ModelEntry) -> dict[str, Any]:
    versions = sorted({*entry.versions, *entry.failures}, key=version_sort_key)
    return {
        "name": entry.name,
        "state": entry.state.value,
        "default_version": entry.default_version,
        "versions": versions,
        "description": entry.config.description if entry.config else "",
        "reason": entry.reason,
    }


def _detail(entry: ModelEntry) -> dict[str, Any]:
    doc = _summary(entry)
    config = entry.config
    if config is None:
        return doc
    reference = entry.versions.get(entry.default_version or "") or next(
        iter(entry.versions.values()), None
    )
    doc.update(
        inputs=[t.spec().describe() for t in config.inputs],
        outputs=[t.spec().describe() for t in config.outputs],
        labels=entry.labels,
        timeout_ms=config.timeout_ms,
        version_details=[
            {**v.describe(), "stats": v.stats.as_dict()} for v in entry.versions.values()
        ]
        + [f.describe() for f in entry.failures.values()],
    )
    if reference is not None:
        batcher = reference.batcher
        doc["batching"] = {
            "max_batch_size": batcher.max_batch_size,
            "max_batch_delay_ms": batcher.max_batch_delay_s * 1000,
            "max_queue_size": batcher.max_queue_rows,
            "instances": batcher.instances,
        }
        doc["timeout_ms"] = int(reference.timeout_s * 1000)
    if config.preprocessing:
        doc["preprocessing"] = config.preprocessing.model_dump()
    return doc
