"""Translation between /v1 wire payloads and the data plane's typed values.

Requests: JSON bodies and multipart uploads become batch-first tensors checked
against the model's signature. Results: an `InferenceResult` becomes a JSON
document at the detail level the client asked for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from modelplex.api.bodies import ClassifyRequest, PredictForm
from modelplex.api.deps import json_limits_of
from modelplex.core import jsonlimits, offload
from modelplex.core.envelopes import parse
from modelplex.core.registry import ServedVersion
from modelplex.core.tensors import Array, Datatype, bytes_batch, decode_base64
from modelplex.core.types import InferenceResult
from modelplex.errors import InvalidInput, UnsupportedMediaType
from modelplex.records import BatchStatus, JobStatus

T = TypeVar("T")
V = TypeVar("V")

_MAX_FORM_FILES = 1000


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
    """Parse the JSON body (within the JSON limits) and `convert` it, on a worker
    thread when the body is big."""
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty")
    limits = json_limits_of(request)

    def parse() -> T:
        return convert(jsonlimits.loads(body, limits))

    if len(body) > offload.WORTH_A_THREAD_BYTES:
        return await offload.cpu_bound(parse)
    return parse()


FormItems = list[tuple[str, str | bytes]]
"""Multipart fields in order: text fields as str, uploaded files as bytes."""
FormFields = list[tuple[str, str | UploadFile]]
"""Multipart fields in order, uploaded files still in their spooled temporary files."""


@asynccontextmanager
async def open_form(request: Request) -> AsyncIterator[FormFields]:
    """The form's fields, its files open (Starlette spools them to disk past 1 MiB)
    until the block ends: for routes that copy files on in chunks."""
    try:
        form = await request.form(max_files=_MAX_FORM_FILES, max_fields=_MAX_FORM_FILES)
    except HTTPException as exc:  # Starlette's multipart parser reports bad forms this way
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from None
    try:
        yield list(form.multi_items())
    finally:
        await form.close()


async def read_form(request: Request) -> FormItems:
    """The form's fields, files read whole (for routes that decode them at once)."""
    async with open_form(request) as fields:
        return [
            (name, await value.read() if isinstance(value, UploadFile) else value)
            for name, value in fields
        ]


# -- forms -----------------------------------------------------------------
def form_document(items: list[tuple[str, V]]) -> dict[str, V]:
    """A form's fields by name, for an envelope to parse; a field given twice is an error."""
    document: dict[str, V] = {}
    for field, value in items:
        if field in document:
            raise InvalidInput(f"form field '{field}' is given twice")
        document[field] = value
    return document


def predict_form(items: FormItems, served: ServedVersion) -> tuple[dict[str, Array], PredictForm]:
    """Multipart predict: each file field is the input it names (repeated for more
    instances); whether the names and counts fit the model is the validator's to say."""
    if any(s.datatype is not Datatype.BYTES for s in served.inputs):
        raise UnsupportedMediaType(
            f"model '{served.model}' has non-BYTES inputs; send them as JSON"
        )
    options: dict[str, str | bytes] = {}
    columns: dict[str, list[bytes]] = {}
    for field, value in items:
        if field in PredictForm.model_fields:
            options[field] = value
        else:
            columns.setdefault(field, []).append(
                value.encode() if isinstance(value, str) else value
            )
    form = parse(PredictForm, options, "the form")
    specs = {s.name: s for s in served.inputs}
    tensors = {name: bytes_batch(values, specs.get(name)) for name, values in columns.items()}
    return tensors, form


def image_of(body: ClassifyRequest) -> bytes:
    """The image of a JSON classify body: base64, or a `data:<type>;base64,<data>` URL."""
    text = body.image
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInput("'image' data URL must be base64-encoded (data:...;base64,...)")
    image = decode_base64(text, "'image'")
    if not image:
        raise InvalidInput("'image' is empty")
    return image


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
        served = result.version_info
        metadata["model_version"] = {
            "runtime": served.runtime,
            "artifact": served.artifact,
            "loaded_at": served.loaded_at,
            "is_default": served.is_default,
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


S = TypeVar("S", JobStatus, BatchStatus)


def status_filter(given: str | None, kind: type[S], allowed: list[str]) -> S | None:
    """A listing's `status` query (any case), or INVALID_INPUT naming the values."""
    if not given:
        return None
    if given.upper() not in allowed:
        raise InvalidInput(f"status must be one of {allowed}")
    return kind(given.upper())
