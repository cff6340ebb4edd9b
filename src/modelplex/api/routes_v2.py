"""The Open Inference Protocol over REST (`/v2`), with Triton's binary tensor extension.

Errors on these routes are the protocol's `{"error": "..."}` with the status
the one error table gives (see `problems.error_response`).
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelplex.api.deps import modelplex_of
from modelplex.api.payloads import dumps
from modelplex.api.routes_v1 import timeout_ms
from modelplex.errors import InvalidInput, ModelNotReady, PayloadTooLarge, UnsupportedMediaType
from modelplex.oip import codec
from modelplex.oip.service import RequestedOutput, V2Request, V2Response, V2Service, V2Tensor

router = APIRouter(tags=["open inference protocol (v2)"])

HEADER_LENGTH = "inference-header-content-length"
_THREAD_PARSE_BYTES = 256 * 1024
_COMPRESS_ABOVE = 1024


def _service(request: Request) -> V2Service:
    return modelplex_of(request).v2


def _json(document: Any, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")


@router.get("/v2", summary="Server metadata")
async def server_metadata(request: Request) -> Response:
    return _json(_service(request).server_metadata())


@router.get("/v2/health/live", summary="Server liveness")
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Server readiness (every model folder loaded or failed)")
async def server_ready(request: Request) -> Response:
    if not _service(request).server_ready():
        raise ModelNotReady("the server is still loading models")
    return Response(status_code=200)


@router.get("/v2/models/stats", summary="Statistics of every model version")
async def all_statistics(request: Request) -> Response:
    return _json(_service(request).model_statistics(None, None))


@router.get("/v2/models/{model}", summary="Model metadata")
@router.get("/v2/models/{model}/versions/{version}", summary="Model version metadata")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_metadata(model, version or None))


@router.get("/v2/models/{model}/ready", summary="Model readiness")
@router.get("/v2/models/{model}/versions/{version}/ready", summary="Model version readiness")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    if not _service(request).model_ready(model, version or None):
        raise ModelNotReady(f"model '{model}' is not ready")
    return Response(status_code=200)


@router.get("/v2/models/{model}/config", summary="Model configuration (Triton's shape)")
@router.get("/v2/models/{model}/versions/{version}/config", summary="Model version configuration")
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_config(model, version or None))


@router.get("/v2/models/{model}/stats", summary="Model statistics (Triton's shape)")
@router.get("/v2/models/{model}/versions/{version}/stats", summary="Model version statistics")
async def model_statistics(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_service(request).model_statistics(model, version or None))


@router.post("/v2/models/{model}/infer", summary="Inference (JSON or binary tensor data)")
@router.post("/v2/models/{model}/versions/{version}/infer", summary="Inference with a version")
async def infer(request: Request) -> Response:
    arrived = time.monotonic()
    body = await _body(request)
    document, inputs = await _parse(body, request.headers.get(HEADER_LENGTH))
    settings = modelplex_of(request).settings
    v2_request = V2Request(
        model=request.path_params["model"],
        version=request.path_params.get("version") or None,
        inputs=inputs,
        outputs=_outputs(document.get("outputs")),
        id=_optional_id(document.get("id")),
        parameters=_parameters(document.get("parameters"), "request"),
        timeout_ms=timeout_ms(request, settings),
        arrived_at=arrived,
    )
    binary_all = _flag(v2_request.parameters, "binary_data_output", "request")
    response = await _service(request).infer(v2_request)
    content, json_length = _encode(response, binary_all)
    headers = {"X-Model-Name": response.model, "X-Model-Version": response.version}
    media = "application/json"
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
        media = "application/octet-stream"
    encoding = _accepted_encoding(request.headers.get("accept-encoding", ""))
    if encoding and len(content) > _COMPRESS_ABOVE:
        content = await asyncio.to_thread(_compress, content, encoding)
        headers["Content-Encoding"] = encoding
    return Response(content, media_type=media, headers=headers)


@router.post("/v2/repository/index", summary="Models in the repository and their state")
async def repository_index(request: Request) -> Response:
    body = await request.body()
    ready = False
    if body.strip():
        document = _loads(body)
        if not isinstance(document, dict):
            raise InvalidInput("the body must be a JSON object")
        ready = _flag(document, "ready", "the body")
    return _json(_service(request).repository_index(ready))


@router.post(
    "/v2/repository/models/{model}/load",
    summary="Load, or load again, a model from its folder (new versions without a restart)",
)
async def repository_load(request: Request, model: str) -> Response:
    body = await request.body()
    parameters: dict[str, Any] = {}
    if body.strip():
        document = _loads(body)
        if not isinstance(document, dict):
            raise InvalidInput("the body must be a JSON object")
        parameters = _parameters(document.get("parameters"), "the body")
    await _service(request).load(model, parameters)
    return Response(status_code=200)


@router.post("/v2/repository/models/{model}/unload", summary="Stop serving a model")
async def repository_unload(request: Request, model: str) -> Response:
    await _service(request).unload(model)
    return Response(status_code=200)


# -- request decoding ---------------------------------------------------------------
async def _body(request: Request) -> bytes:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding '{encoding}' is not supported (gzip, deflate)"
        )
    settings = modelplex_of(request).settings
    return await asyncio.to_thread(_decompress, body, encoding, settings.max_request_bytes)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate with a ceiling: a small bomb must not become gigabytes in memory."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"the body is not valid {encoding} data") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the decompressed body exceeds {limit} bytes")
    return data


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference header is not valid JSON: {exc}") from None


async def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[V2Tensor]]:
    """The JSON header document and the decoded inputs (large bodies off the loop)."""
    if header_length is None:
        header, binary = body, b""
    else:
        split = _header_length(header_length, len(body))
        header, binary = body[:split], body[split:]
    if len(body) > _THREAD_PARSE_BYTES:
        return await asyncio.to_thread(_request_from, header, binary)
    return _request_from(header, binary)


def _header_length(value: str, body_length: int) -> int:
    # ASCII digits only: int() also reads other scripts' digits, and isdigit() admits "²".
    digits = value.strip()
    if digits.isascii() and digits.isdecimal() and len(digits) <= 12:
        length = int(digits)
        if length <= body_length:
            return length
    raise InvalidInput("Inference-Header-Content-Length does not fit the body")


def _request_from(header: bytes, binary: bytes) -> tuple[dict[str, Any], list[V2Tensor]]:
    document = _loads(header)
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    offset = 0
    inputs = []
    for i, item in enumerate(raw_inputs):
        tensor, used = _input(item, i, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return document, inputs


def _input(item: Any, index: int, binary: bytes, offset: int) -> tuple[V2Tensor, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a name")
    name = item["name"]
    what = f"input '{name}'"
    datatype = codec.datatype_of(str(item.get("datatype", "")))
    shape = codec.check_shape(item.get("shape"), what)
    parameters = _parameters(item.get("parameters"), what)
    size = parameters.get("binary_data_size")
    if size is not None:
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or offset + size > len(binary)
        ):
            raise InvalidInput(f"{what}: binary_data_size does not fit the binary data")
        data = codec.from_raw(binary[offset : offset + size], datatype, shape, what)
        return V2Tensor(name, datatype, shape, data, parameters), size
    if "data" not in item:
        raise InvalidInput(f"{what} has neither data nor binary_data_size")
    return V2Tensor(name, datatype, shape, codec.from_json(item["data"], datatype, shape, what)), 0


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a name")
        what = f"output '{item['name']}'"
        parameters = _parameters(item.get("parameters"), what)
        if "binary_data" in parameters:
            _flag(parameters, "binary_data", what)
        outputs.append(RequestedOutput(item["name"], parameters))
    return outputs


def _parameters(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what}: parameters must be an object")
    return raw


def _optional_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 256:
        raise InvalidInput("'id' must be a string of at most 256 characters")
    return raw


def _flag(parameters: dict[str, Any], name: str, what: str) -> bool:
    """A boolean parameter: JSON true or false only, so a typo cannot flip it."""
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: '{name}' must be true or false")
    return value


# -- response encoding --------------------------------------------------------------
def _encode(response: V2Response, binary_all: bool) -> tuple[bytes, int | None]:
    """The JSON document, followed by binary tensors if any output is binary."""
    outputs = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        doc: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype.value,
            "shape": list(tensor.shape),
        }
        wants_binary = tensor.parameters.get("binary_data", binary_all)
        if wants_binary is True:
            raw = codec.to_raw(tensor.data)
            doc["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            doc["data"] = codec.to_json(tensor.data)
        outputs.append(doc)
    document: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    header = orjson.dumps(document)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _accepted_encoding(header: str) -> str | None:
    """gzip or deflate if the client accepts one (`q=0` refuses it), else None."""
    offered = set()
    for part in header.split(","):
        name, _, params = part.partition(";")
        quality = params.strip().lower().replace(" ", "")
        if quality.startswith("q=") and _zero_quality(quality[2:]):
            continue
        offered.add(name.strip().lower())
    for encoding in ("gzip", "deflate"):
        if encoding in offered:
            return encoding
    return None


def _zero_quality(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return True  # a malformed weight is not an acceptance


def _compress(content: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(content, compresslevel=5)
    return zlib.compress(content, 5)
