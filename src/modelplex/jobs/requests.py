"""A model job's request as the job store keeps it: checked once, at submission.

The API decodes a job's `/v1` predict body and checks it against the version
it pins (`core.validation`), exactly as the predict endpoint would; what is
stored is the checked tensors (raw little-endian, base64) with the options and
the digest of the signature they were checked against. The worker turns the
document back into a request without converting or validating it again.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from modelplex.core.rawtensors import from_raw, to_raw
from modelplex.core.tensors import Array, Datatype
from modelplex.core.types import InferenceRequest
from modelplex.core.validation import CheckedRequest

FORMAT = "checked-request/1"
_ENVELOPE_BYTES = 100  # the keys, the format and top_k
_INPUT_BYTES = 60  # an input's keys and datatype


def encode(checked: CheckedRequest) -> dict[str, Any]:
    request = checked.request
    return {
        "format": FORMAT,
        "signature": checked.served.signature,
        "top_k": request.top_k,
        "outputs": list(request.outputs) if request.outputs is not None else None,
        "inputs": {
            name: {
                "datatype": Datatype.from_numpy(tensor.dtype).value,
                "shape": list(tensor.shape),
                "data": base64.b64encode(to_raw(tensor)).decode(),
            }
            for name, tensor in request.inputs.items()
        },
    }


def encode_json(checked: CheckedRequest) -> bytes:
    return orjson.dumps(encode(checked))


def encoded_size(checked: CheckedRequest) -> int:
    """About the length of `encode_json(checked)` (within a few dozen bytes per
    input), from the tensors' sizes: to choose a row or a blob without encoding."""
    request = checked.request
    size = _ENVELOPE_BYTES + len(checked.served.signature) + len(str(request.outputs))
    for name, tensor in request.inputs.items():
        raw = _raw_size(tensor)
        size += _INPUT_BYTES + len(name) + 4 * ((raw + 2) // 3) + 12 * tensor.ndim
    return size


def _raw_size(tensor: Array) -> int:
    if tensor.dtype == object:  # BYTES: a 4-byte length before each element
        return sum(4 + len(v if isinstance(v, bytes) else str(v).encode()) for v in tensor.flat)
    return int(tensor.nbytes)


def is_checked(document: Any) -> bool:
    return isinstance(document, dict) and document.get("format") == FORMAT


def decode(document: dict[str, Any], model: str, version: str) -> tuple[InferenceRequest, str]:
    """The stored request (arriving now) and the signature it was checked against."""
    inputs = {
        name: from_raw(
            base64.b64decode(tensor["data"]),
            Datatype(tensor["datatype"]),
            tuple(tensor["shape"]),
            f"input '{name}'",
        )
        for name, tensor in document["inputs"].items()
    }
    request = InferenceRequest(
        model=model,
        version=version,
        inputs=inputs,
        arrived_at=time.monotonic(),
        top_k=document["top_k"],
        outputs=document["outputs"],
    )
    return request, str(document["signature"])
