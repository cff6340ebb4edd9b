"""The Open Inference Protocol's REST wire format: JSON or binary tensors, compression.

Requests: the JSON header document is parsed with `v2_schemas.V2InferRequest`,
then each tensor is decoded by the codec (binary tensors from the bytes after
the header). Responses: JSON, or JSON followed by binary tensors. Decoding
only: whether the tensors fit the model is the validator's to say.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson

from modelplex.api.v2_schemas import V2InferRequest, V2RequestInput
from modelplex.core import jsonlimits, offload
from modelplex.core.envelopes import parse
from modelplex.core.jsonlimits import JsonLimits
from modelplex.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelplex.oip import codec
from modelplex.oip.service import RequestedOutput, V2Response, V2Tensor

COMPRESS_ABOVE = 1024


# -- request decoding ---------------------------------------------------------------
async def decoded_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body, inflated if the client compressed it (never past `limit` bytes)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding '{encoding}' is not supported (gzip, deflate)"
        )
    return await offload.cpu_bound(_decompress, body, encoding, limit)


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


async def parse_infer(
    body: bytes, header_length: str | None, limits: JsonLimits, max_elements: int
) -> tuple[V2InferRequest, list[V2Tensor]]:
    """The JSON header document (within the JSON limits) and the decoded inputs, at
    most `max_elements` BYTES elements in all (large bodies off the loop)."""
    if header_length is None:
        header, binary = body, b""
    else:
        split = _header_length(header_length, len(body))
        header, binary = body[:split], body[split:]
    if len(body) > codec.OFFLOAD_BYTES:
        return await offload.cpu_bound(_request_from, header, binary, limits, max_elements)
    return _request_from(header, binary, limits, max_elements)


def _header_length(value: str, body_length: int) -> int:
    # ASCII digits only: int() also reads other scripts' digits, and isdigit() admits "²".
    digits = value.strip()
    if digits.isascii() and digits.isdecimal() and len(digits) <= 12:
        length = int(digits)
        if length <= body_length:
            return length
    raise InvalidInput("Inference-Header-Content-Length does not fit the body")


def _request_from(
    header: bytes, binary: bytes, limits: JsonLimits, max_elements: int
) -> tuple[V2InferRequest, list[V2Tensor]]:
    document = parse(
        V2InferRequest, jsonlimits.loads(header, limits, "the inference header"),
        "the inference request",
    )  # fmt: skip
    budget = codec.ElementBudget(max_elements)
    offset = 0
    inputs = []
    for item in document.inputs:
        tensor, used = _input(item, binary, offset, budget)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return document, inputs


def _input(
    item: V2RequestInput, binary: bytes, offset: int, budget: codec.ElementBudget
) -> tuple[V2Tensor, int]:
    what = f"input '{item.name}'"
    datatype = codec.datatype_of(item.datatype)
    shape = codec.check_shape(item.shape, what)
    budget.charge(datatype, shape, what)
    parameters = item.parameters or {}
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
        return V2Tensor(item.name, datatype, shape, data, parameters), size
    if item.data is None:
        raise InvalidInput(f"{what} has neither data nor binary_data_size")
    return V2Tensor(
        item.name, datatype, shape, codec.from_json(item.data, datatype, shape, what)
    ), 0


def requested_outputs(document: V2InferRequest) -> list[RequestedOutput] | None:
    if document.outputs is None:
        return None
    outputs = []
    for item in document.outputs:
        parameters = item.parameters or {}
        if "binary_data" in parameters:
            flag(parameters, "binary_data", f"output '{item.name}'")
        outputs.append(RequestedOutput(item.name, parameters))
    return outputs


def flag(parameters: dict[str, Any], name: str, what: str) -> bool:
    """A boolean parameter: JSON true or false only, so a typo cannot flip it."""
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: '{name}' must be true or false")
    return value


# -- response encoding --------------------------------------------------------------
async def encoded(response: V2Response, binary_all: bool) -> tuple[bytes, int | None]:
    """`encode`, off the loop when the answer is large."""
    if codec.heavy(t.data for t in response.outputs):
        return await offload.cpu_bound(encode, response, binary_all)
    return encode(response, binary_all)


def encode(response: V2Response, binary_all: bool) -> tuple[bytes, int | None]:
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


def accepted_encoding(header: str) -> str | None:
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


def compress(content: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(content, compresslevel=5)
    return zlib.compress(content, 5)
