"""Translation between /v1 wire payloads and the data plane's typed values.

Requests: JSON bodies and multipart uploads become batch-first tensors checked
against the model's signature. Results: an `InferenceResult` becomes a JSON
document at the detail level the client asked for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from enum import StrEnum
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from modelplex.core.registry import ServedVersion
from modelplex.core.tensors import Array, Datatype, TensorSpec, to_tensor
from modelplex.core.types import ClassScore, InferenceResult
from modelplex.errors import InvalidInput, UnsupportedMediaType

# Bodies above this are parsed on a worker thread so one big request cannot
# stall every other request on the event loop.
_THREAD_PARSE_BYTES = 1 << 20
_MAX_FORM_FILES = 1000
_PREDICT_FIELDS = frozenset({"instance", "instances", "parameters"})
_PARAMETER_FIELDS = frozenset({"top_k", "outputs"})
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


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty")
    try:
        if len(body) > _THREAD_PARSE_BYTES:
            return await asyncio.to_thread(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


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


def unsupported(media: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"content type '{media or '(none)'}' is not supported; "
        "send application/json or multipart/form-data"
    )


# -- predict ---------------------------------------------------------------
class PredictOptions:
    __slots__ = ("outputs", "top_k")

    def __init__(self, top_k: int | None = None, outputs: list[str] | None = None) -> None:
        self.top_k = top_k
        self.outputs = outputs


def parse_predict_json(body: Any, served: ServedVersion) -> tuple[dict[str, Array], PredictOptions]:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with 'instance' or 'instances'")
    unknown = sorted(set(body) - _PREDICT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; expected instance, instances, parameters")
    if ("instance" in body) == ("instances" in body):
        raise InvalidInput("send exactly one of 'instance' or 'instances'")
    if "instance" in body:
        instances = [body["instance"]]
    else:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list")
    return instances_to_tensors(instances, served.inputs), _parse_parameters(body.get("parameters"))


def _parse_parameters(raw: Any) -> PredictOptions:
    if raw is None:
        return PredictOptions()
    if not isinstance(raw, dict):
        raise InvalidInput("'parameters' must be an object")
    unknown = sorted(set(raw) - _PARAMETER_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown parameters {unknown}; expected top_k, outputs")
    outputs = raw.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)
    ):
        raise InvalidInput("parameters.outputs must be a list of output names")
    return PredictOptions(top_k=parse_top_k(raw.get("top_k")), outputs=outputs)


def parse_top_k(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise InvalidInput("top_k must be a positive integer")
    return raw


def instances_to_tensors(instances: list[Any], specs: tuple[TensorSpec, ...]) -> dict[str, Array]:
    """Instances (bare values for one-input models, else objects keyed by input) to columns."""
    names = {s.name for s in specs}
    if len(specs) == 1 and not _is_keyed(instances[0], names):
        return {specs[0].name: to_tensor(instances, specs[0])}
    columns: dict[str, list[Any]] = {s.name: [] for s in specs}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InvalidInput(
                f"instance {i} must be an object keyed by input name {sorted(names)}"
            )
        unknown = sorted(set(instance) - names)
        if unknown:
            raise InvalidInput(
                f"instance {i} has unknown fields {unknown}; inputs are {sorted(names)}"
            )
        missing = sorted(names - set(instance))
        if missing:
            raise InvalidInput(f"instance {i} is missing inputs {missing}")
        for name, value in instance.items():
            columns[name].append(value)
    return {s.name: to_tensor(columns[s.name], s) for s in specs}


def _is_keyed(instance: Any, names: set[str]) -> bool:
    """An object naming at least one input is keyed; anything else is a bare value."""
    return isinstance(instance, dict) and not names.isdisjoint(instance)


def parse_predict_form(
    items: FormItems, served: ServedVersion
) -> tuple[dict[str, Array], PredictOptions]:
    """Multipart: one file field per BYTES input (repeat a field for more instances)."""
    if any(s.datatype is not Datatype.BYTES for s in served.inputs):
        raise UnsupportedMediaType(
            f"model '{served.model}' has non-BYTES inputs; send them as JSON"
        )
    names = {s.name for s in served.inputs}
    columns: dict[str, list[bytes]] = {name: [] for name in names}
    top_k = None
    for field, value in items:
        if field == "top_k" and isinstance(value, str):
            top_k = parse_top_k(value)
        elif field in names:
            columns[field].append(value.encode() if isinstance(value, str) else value)
        else:
            raise InvalidInput(f"unknown form field '{field}'; inputs are {sorted(names)}")
    counts = {len(v) for v in columns.values()}
    if counts == {0}:
        raise InvalidInput(f"no input uploaded; expected fields {sorted(names)}")
    if len(counts) != 1:
        raise InvalidInput("every input needs the same number of uploads")
    return {name: _bytes_tensor(values) for name, values in columns.items()}, PredictOptions(top_k)


def _bytes_tensor(values: list[bytes]) -> Array:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


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
        image=decode_base64(image),
        top_k=parse_top_k(body.get("top_k")) or 5,
        model=_optional_str(body, "model"),
        version=_optional_str(body, "version"),
    )


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


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, optionally as a `data:` URL."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'image' is not valid base64") from None


# -- results ---------------------------------------------------------------
def class_json(score: ClassScore) -> dict[str, Any]:
    return {"label": score.label, "class_id": score.class_id, "confidence": score.confidence}


def instance_predictions(result: InferenceResult, top_k: int | None) -> list[dict[str, Any]]:
    if result.classes is not None:
        predictions = []
        for row in result.classes:
            entry = class_json(row[0])
            if top_k is not None and top_k > 1:
                entry["top_k"] = [class_json(s) for s in row]
            predictions.append(entry)
        return predictions
    return [
        {name: _row_json(tensor, i) for name, tensor in result.outputs.items()}
        for i in range(result.rows)
    ]


def _row_json(tensor: Array, row: int) -> Any:
    value = tensor[row]
    if tensor.dtype != object:
        return value  # orjson serialises numpy rows and scalars natively
    items = value.reshape(-1) if isinstance(value, np.ndarray) else [value]
    converted = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in items]
    return converted if isinstance(value, np.ndarray) else converted[0]


def render(
    result: InferenceResult,
    predictions: list[dict[str, Any]],
    detail: Detail,
    request_id: str,
    arrived_at: float,
    served: ServedVersion,
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
        metadata["model_version"] = {
            "runtime": served.runtime_kind.value,
            "artifact": served.artifact.name,
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
