"""The one validator: a request checked against the version that will serve it.

Every transport decodes its wire format into an `InferenceRequest` (numbers
cast to the declared datatype, nothing lossy) and hands it here, so `/v1`, the
Open Inference Protocol over REST and gRPC, job submission and pipeline steps
refuse the same bad input with the same code and the same message. The rules
(input names, datatypes, shapes, instance counts, outputs, `top_k`) live here
and nowhere else.

A job's request is checked once, at submission, and stored with the digest of
the signature it was checked against; the worker restores it with `trusted`,
which only confirms the version still has that signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelplex.core.served import ServedVersion
from modelplex.core.tensors import Array, Datatype
from modelplex.core.types import InferenceRequest
from modelplex.errors import Conflict, InvalidInput


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that fits `served`; only `check` and `trusted` make one."""

    request: InferenceRequest
    served: ServedVersion
    rows: int


def check(served: ServedVersion, request: InferenceRequest) -> CheckedRequest:
    """`request` if it fits `served`, else InvalidInput naming the first thing that does not."""
    rows = check_inputs(served, request.inputs)
    check_options(served, request.outputs, request.top_k)
    return CheckedRequest(request, served, rows)


def trusted(served: ServedVersion, request: InferenceRequest, signature: str) -> CheckedRequest:
    """A request checked earlier against a version with `signature` (a stored job's).

    Refused if the version has changed its signature since (its folder was
    reloaded with another model.toml): the request was checked against another
    contract."""
    if signature != served.signature:
        raise Conflict(
            f"model '{served.model}' version '{served.version}' has changed its signature "
            "since the request was checked; submit it again"
        )
    return CheckedRequest(request, served, _rows(request.inputs))


def check_row_count(served: ServedVersion, rows: int) -> None:
    """The instance-count rule on its own, for decoders that can refuse a huge
    request before converting it."""
    if rows < 1:
        raise InvalidInput("the request has no instances")
    if rows > served.max_rows:
        raise InvalidInput(
            f"the request has {rows} instances; model '{served.model}' accepts at most "
            f"{served.max_rows} per request"
        )


def check_inputs(served: ServedVersion, inputs: Mapping[str, Array]) -> int:
    """The number of instances, if every input fits its spec."""
    specs = {s.name: s for s in served.inputs}
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise InvalidInput(f"unknown inputs {unknown}; the model takes {sorted(specs)}")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise InvalidInput(f"missing inputs {missing}; the model takes {sorted(specs)}")
    for spec in served.inputs:
        tensor = inputs[spec.name]
        shape = tuple(tensor.shape)
        if not shape:
            raise InvalidInput(f"input '{spec.name}' has no instance dimension (shape [])")
        datatype = Datatype.from_numpy(tensor.dtype)
        if datatype is not spec.datatype:
            raise InvalidInput(
                f"input '{spec.name}' has datatype {datatype}; the model takes {spec.datatype}"
            )
        if not spec.accepts_shape(shape[1:]):
            raise InvalidInput(
                f"input '{spec.name}' has shape {list(shape)}, instances of shape "
                f"{list(shape[1:])}; the model takes instances of shape {list(spec.shape)}"
            )
    rows = _rows(inputs)
    check_row_count(served, rows)
    return rows


def check_options(served: ServedVersion, outputs: Sequence[str] | None, top_k: object) -> None:
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInput("top_k (classes per instance) must be a positive integer")
        if served.classifier is None:  # a parameter the model cannot honour is refused
            raise InvalidInput(
                f"model '{served.model}' has no classification, so top_k does not apply; "
                f"it answers its outputs {[o.name for o in served.outputs]}"
            )
    if outputs is not None:
        known = {o.name for o in served.outputs}
        if not outputs:
            raise InvalidInput(f"outputs must name at least one of {sorted(known)}")
        unknown = [name for name in outputs if name not in known]
        if unknown:
            raise InvalidInput(f"unknown outputs {unknown}; the model has {sorted(known)}")


def _rows(inputs: Mapping[str, Array]) -> int:
    sizes = {len(t) for t in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput("all inputs must have the same number of instances")
    return sizes.pop()
