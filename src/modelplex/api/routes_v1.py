"""Every route of the native API (health and /v1), readable in one screen.

Routes translate HTTP into data-plane calls and back; they raise domain errors
and never build error responses themselves (see `modelplex.api.problems`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplex import errors
from modelplex.api import payloads
from modelplex.api.bodies import ClassifyForm, ClassifyRequest, PredictForm
from modelplex.api.deps import modelplex_of
from modelplex.api.disconnect import until_disconnected
from modelplex.api.openapi_docs import BODY_CLASSIFY, BODY_PREDICT, PARAMS, problem_responses
from modelplex.api.problems import answer_directly, request_id_of
from modelplex.api.schemas import (
    ClassifyResponse,
    Health,
    ModelDetail,
    ModelList,
    PredictResponse,
    Readiness,
)
from modelplex.api.views import model_detail, model_summary
from modelplex.auth.access import principal_of, require_model
from modelplex.core.dataplane import DataPlane
from modelplex.core.envelopes import parse
from modelplex.core.instances import (
    PredictRequest,
    class_json,
    parse_predict_json,
    predictions_json,
)
from modelplex.core.types import InferenceRequest, InferenceResult
from modelplex.core.validation import check
from modelplex.errors import InvalidInput
from modelplex.settings import Settings

log = logging.getLogger(__name__)

JSON = "application/json"
TIMEOUT_HEADER = "x-request-timeout-ms"
PREDICT_ERRORS = problem_responses(
    errors.InvalidInput, errors.ModelNotFound, errors.ModelNotReady, errors.InferenceTimeout,
    errors.ResourceExhausted, errors.PayloadTooLarge, errors.UnsupportedMediaType,
    errors.InternalError,
)  # fmt: skip

router = APIRouter()


@router.get("/healthz", tags=["health"], response_model=Health, summary="Liveness")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get(
    "/readyz",
    tags=["health"],
    response_model=Readiness,
    summary="Readiness: 200 once loaded, with a model READY and no required model FAILED",
    responses={503: {"description": "Still loading, or not ready (`reason`)", "model": Readiness}},
)
async def readyz(request: Request) -> Response:
    readiness = _dataplane(request).registry.readiness()
    models = {"ready": list(readiness.ready), "failed": readiness.failed}
    auth = modelplex_of(request).auth.mode.value
    if not readiness.loaded:
        body = {"status": "loading", "reason": readiness.problem, "models": models, "auth": auth}
        return _json(body, 503)
    if readiness.problem is not None:
        body = {"status": "not_ready", "reason": readiness.problem, "models": models, "auth": auth}
        return _json(body, 503)
    return _json({"status": "ready", "models": models, "auth": auth})


@router.get("/v1/models", tags=["models"], response_model=ModelList, summary="List models")
async def list_models(request: Request) -> Response:
    return _json({"models": [model_summary(m) for m in _dataplane(request).registry.catalog()]})


@router.get(
    "/v1/models/{model}",
    tags=["models"],
    response_model=ModelDetail,
    summary="A model: versions, state, signature, labels, batching settings",
    responses=problem_responses(errors.ModelNotFound),
)
async def get_model(request: Request, model: str) -> Response:
    return _json(model_detail(_dataplane(request).registry.describe(model)))


@router.post(
    "/v1/models/{model}/predict",
    tags=["inference"],
    summary="Predict with the model's default version",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra={**BODY_PREDICT, "parameters": PARAMS["model"]},
)
async def predict_default(request: Request) -> Response:
    return await _predict(request, request.path_params["model"], None)


@router.post(
    "/v1/models/{model}/versions/{version}/predict",
    tags=["inference"],
    summary="Predict with one version of a model",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra={**BODY_PREDICT, "parameters": PARAMS["model_version"]},
)
async def predict_version(request: Request) -> Response:
    params = request.path_params
    return await _predict(request, params["model"], params["version"])


@router.post(
    "/v1/classify",
    tags=["inference"],
    summary="Classify one image (multipart field `image`, or JSON with base64)",
    response_model=ClassifyResponse,
    responses=PREDICT_ERRORS,
    openapi_extra={**BODY_CLASSIFY, "parameters": PARAMS["headers"]},
)
async def classify(request: Request) -> Response:
    arrived = time.monotonic()
    dataplane, settings = _dataplane(request), _settings(request)
    detail = payloads.Detail.from_header(request.headers.get("x-response-detail"))
    deadline_ms = timeout_ms(request, settings)
    media = payloads.media_type(request)
    decode_start = time.perf_counter()
    body: ClassifyRequest | ClassifyForm
    if payloads.is_json(media):
        body = await payloads.read_json(request, lambda doc: parse(ClassifyRequest, doc))
        image = payloads.image_of(body)
    elif media == "multipart/form-data":
        fields = payloads.form_document(await payloads.read_form(request))
        body = parse(ClassifyForm, fields, "the form")
        image = body.image
    else:
        raise payloads.unsupported(media)
    require_model(principal_of(request.scope), body.model or settings.classify_model, body.version)
    decode_s = time.perf_counter() - decode_start
    result = await until_disconnected(
        request,
        lambda stop: dataplane.classify(
            image,
            model=body.model or settings.classify_model,
            version=body.version,
            top_k=body.top_k,
            arrived_at=arrived,
            request_id=request_id_of(request.scope),
            timeout_ms=deadline_ms,
            decode_s=decode_s,
            stop=stop,
        ),
    )
    predictions = [class_json(s) for s in (result.classes or [[]])[0]]
    return _prediction_response(request, result, predictions, detail, arrived)


# Documented here, parsed by hand in the routes (see schemas.py).
REQUEST_SCHEMAS = (PredictRequest, PredictForm, ClassifyRequest, ClassifyForm)


async def _predict(request: Request, model: str, version: str | None) -> Response:
    arrived = time.monotonic()
    dataplane = _dataplane(request)
    detail = payloads.Detail.from_header(request.headers.get("x-response-detail"))
    deadline_ms = timeout_ms(request, _settings(request))
    served = dataplane.resolve(model, version)
    media = payloads.media_type(request)
    decode_start = time.perf_counter()
    options: PredictRequest | PredictForm
    outputs: list[str] | None = None
    if payloads.is_json(media):
        inputs, body = await payloads.read_json(
            request, lambda doc: parse_predict_json(doc, served)
        )
        options, outputs = body, body.outputs
    elif media == "multipart/form-data":
        inputs, options = payloads.predict_form(await payloads.read_form(request), served)
    else:
        raise payloads.unsupported(media)
    inference = InferenceRequest(
        model=model,
        version=served.version,
        inputs=inputs,
        arrived_at=arrived,
        request_id=request_id_of(request.scope),
        timeout_ms=deadline_ms,
        top_k=options.top_k,
        outputs=outputs,
    )
    inference.timings.decode_s = time.perf_counter() - decode_start
    # The version was resolved to decode the body: check against it, not a second lookup.
    checked = check(served, inference)
    if served.preprocessor is None:
        result = await dataplane.execute(checked)
    else:  # images can hold a thread for long: stop if the client leaves
        result = await until_disconnected(request, lambda stop: dataplane.execute(checked, stop))
    predictions = predictions_json(result, options.top_k)
    return _prediction_response(request, result, predictions, detail, arrived)


_PREDICT_PREFIX, _PREDICT_SUFFIX = "/v1/models/", "/predict"


def predict_shortcut(scope: Scope) -> ASGIApp | None:
    """`POST /v1/models/{model}/predict` as an app that skips FastAPI's router and
    its middleware layers (see `RequestContextMiddleware`); None for anything else."""
    path: str = scope["path"]
    if (
        scope["method"] != "POST"
        or not path.startswith(_PREDICT_PREFIX)
        or not path.endswith(_PREDICT_SUFFIX)
    ):
        return None
    model = path[len(_PREDICT_PREFIX) : -len(_PREDICT_SUFFIX)]
    if not model or "/" in model:
        return None
    return functools.partial(_predict_app, model)


async def _predict_app(model: str, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    await answer_directly(lambda: _predict(request, model, None), scope, receive, send)


def _dataplane(request: Request) -> DataPlane:
    return modelplex_of(request).dataplane


def _settings(request: Request) -> Settings:
    return modelplex_of(request).settings


def _json(document: Any, status: int = 200) -> Response:
    return Response(payloads.dumps(document), status_code=status, media_type=JSON)


def _prediction_response(
    request: Request,
    result: InferenceResult,
    predictions: list[dict[str, Any]],
    detail: payloads.Detail,
    arrived: float,
) -> Response:
    body = payloads.render(result, predictions, detail, request_id_of(request.scope), arrived)
    return Response(
        body,
        media_type=JSON,
        headers={"X-Model-Name": result.model, "X-Model-Version": result.version},
    )


def timeout_ms(request: Request, settings: Settings) -> int | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    text = raw.strip()
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
    if not 1 <= value <= settings.max_request_timeout_ms:
        raise InvalidInput(
            f"X-Request-Timeout-Ms must be an integer from 1 to {settings.max_request_timeout_ms}"
        )
    return value
