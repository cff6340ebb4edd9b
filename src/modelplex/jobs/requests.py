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

from modelplex.core.rawtensors import from_raw, to_raw
from modelplex.core.tensors import Datatype
from modelplex.core.types import InferenceRequest
from modelplex.core.validation import CheckedRequest

FORMAT = "checked-request/1"


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
