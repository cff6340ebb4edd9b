"""Translation between /v1 wire payloads and the data plane's typed values.

Requests: JSON bodies and multipart uploads become batch-first tensors checked
against the model's signature. Results: an `InferenceResult` becomes a JSON
document at the detail level the client asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from modelplex.core.instances import PredictOptions, parse_top_k
from modelplex.core.registry import ServedVersion
from modelplex.core.tensors import Array, Datatype, bytes_batch, decode_base64
from modelplex.core.types import InferenceResult
from modelplex.errors import InvalidInput, UnsupportedMediaType

T = TypeVar("T")

# Bodies above this are parsed and converted on a worker thread, so one big
# request cannot stall every other request on the event loop.
_THREAD_PARSE_BYTES = 256 * 1024
_MAX_FORM_FILES = 1000
_CLASSIFY_FIELDS = frozenset({"image", "top_k", "model", "version"})


class Detail(StrEnum):
    MINIMAL = "minimal"
    STANDARD = "standard"
    VERBOSE = "verbose"

    @classmethod
    def from_header(cls, value: str | None) -> Detail:
        if value is None:
            return cls.STANDARD
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise InvalidInput(
                f"X-Response-Detail must be minimal, standard or verbose, not '{value}'"
            ) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def unsupported(media: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"content type '{media or '(none)'}' is not supported; "
        "send application/json or multipart/form-data"
    )


async def read_json(request: Request, convert: Callable[[Any], T]) -> T:
    """Parse the JSON body and `convert` it, on a worker thread when the body is big."""
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty")

    def parse() -> T:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        return convert(document)

    if len(body) > _THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse)
    return parse()


FormItems = list[tuple[str, str | bytes]]
"""Multipart fields in order: text fields as str, uploaded files as bytes."""


async def read_form(request: Request) -> FormItems:
    items: FormItems = []
    try:
        async with request.form(max_files=_MAX_FORM_FILES, max_fields=_MAX_FORM_FILES) as form:
            for field, value in form.multi_items():
                items.append(
                    (field, await value.read() if isinstance(value, UploadFile) else value)
                )
    except HTTPException as exc:  # Starlette's multipart parser reports bad forms this way
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from None
    return items


# -- predict ---------------------------------------------------------------
def parse_predict_form(
    items: FormItems, served: ServedVersion
) -> tuple[dict[str, Array], PredictOptions]:
    """Multipart: one file field per BYTES input (repeat a field for more instances)."""
    if any(s.datatype is not Datatype.BYTES for s in served.inputs):
        raise UnsupportedMediaType(
            f"model '{served.model}' has non-BYTES inputs; send them as JSON"
        )
    specs = {s.name: s for s in served.inputs}
    columns: dict[str, list[bytes]] = {name: [] for name in specs}
    top_k = None
    for field, value in items:
        if field == "top_k" and isinstance(value, str):
            top_k = parse_top_k(value)
        elif field in specs:
            columns[field].append(value.encode() if isinstance(value, str) else value)
        else:
            raise InvalidInput(f"unknown form field '{field}'; inputs are {sorted(specs)}")
    counts = {len(v) for v in columns.values()}
    if counts == {0}:
        raise InvalidInput(f"no input uploaded; expected fields {sorted(specs)}")
    if len(counts) != 1:
        raise InvalidInput("every input needs the same number of uploads")
    tensors = {name: bytes_batch(values, specs[name]) for name, values in columns.items()}
    return tensors, PredictOptions(top_k)


# -- classify --------------------------------------------------------------
class ClassifyOptions:
    __slots__ = ("image", "model", "top_k", "version")

    def __init__(self, image: bytes, top_k: int, model: str | None, version: str | None) -> None:
        self.image = image
        self.top_k = top_k
        self.model = model
        self.version = version


def parse_classify_json(body: Any) -> ClassifyOptions:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with an 'image' field")
    unknown = sorted(set(body) - _CLASSIFY_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; expected image, top_k, model, version")
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidInput("'image' must be a base64 string")
    return ClassifyOptions(
        image=_image_from_text(image),
        top_k=parse_top_k(body.get("top_k")) or 5,
        model=_optional_str(body, "model"),
        version=_optional_str(body, "version"),
    )


def _image_from_text(text: str) -> bytes:
    """Base64, or a `data:<type>;base64,<data>` URL."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInput("'image' data URL must be base64-encoded (data:...;base64,...)")
    image = decode_base64(text, "'image'")
    if not image:
        raise InvalidInput("'image' is empty")
    return image


def parse_classify_form(items: FormItems) -> ClassifyOptions:
    image: bytes | None = None
    fields: dict[str, str] = {}
    for field, value in items:
        if field == "image":
            if image is not None:
                raise InvalidInput("send one 'image' per request (use jobs for many)")
            image = value.encode() if isinstance(value, str) else value
        elif field in _CLASSIFY_FIELDS and isinstance(value, str):
            fields[field] = value
        else:
            raise InvalidInput(
                f"unknown form field '{field}'; expected image, top_k, model, version"
            )
    if not image:
        raise InvalidInput("the form has no 'image' file")
    return ClassifyOptions(
        image=image,
        top_k=parse_top_k(fields.get("top_k")) or 5,
        model=fields.get("model") or None,
        version=fields.get("version") or None,
    )


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a string")
    return value or None


# -- results ---------------------------------------------------------------
def render(
    result: InferenceResult,
    predictions: list[dict[str, Any]],
    detail: Detail,
    request_id: str,
    arrived_at: float,
) -> bytes:
    if detail is Detail.MINIMAL:
        return dumps({"predictions": predictions})
    metadata: dict[str, Any] = {
        "processing_time_ms": round((time.monotonic() - arrived_at) * 1e3, 3)
    }
    if detail is Detail.VERBOSE:
        metadata["timing"] = result.timings.as_ms()
        metadata["batch_size"] = result.batch_size
        metadata["input_shape"] = result.input_shapes
        details = result.version_details
        metadata["model_version"] = {
            key: details[key] for key in ("runtime", "artifact", "loaded_at", "is_default")
        }
    return dumps(
        {
            "id": request_id,
            "model": {"name": result.model, "version": result.version},
            "predictions": predictions,
            "metadata": metadata,
        }
    )


def dumps(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
