"""One converter per wire message: protobuf <-> the protocol's typed values."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format

from modelplex.core.tensors import Array, Datatype, cast_checked
from modelplex.errors import InvalidInput
from modelplex.grpc.protos import inference_pb2 as pb
from modelplex.oip import codec
from modelplex.oip.service import RequestedOutput, V2Request, V2Response, V2Tensor

# Which repeated field of InferTensorContents holds each datatype.
_CONTENTS = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}


_FIELD_DTYPES = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def parameters(mapping: Any) -> dict[str, Any]:
    if not mapping:  # the usual case, and cheaper to see than to iterate
        return {}
    return {key: parameter_value(value) for key, value in mapping.items()}


def infer_request(message: pb.ModelInferRequest, max_elements: int) -> V2Request:
    """The request's tensors, decoded; at most `max_elements` BYTES elements in all."""
    # Each access to a protobuf field builds a wrapper: every field is read once.
    raw = message.raw_input_contents
    tensors = message.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(tensors)} inputs: give one per input"
        )
    budget = codec.ElementBudget(max_elements)
    inputs = []
    for i, tensor in enumerate(tensors):
        name = tensor.name
        what = f"input '{name}'"
        datatype = codec.datatype_of(tensor.datatype)
        shape = codec.check_shape(list(tensor.shape), what)
        if datatype is Datatype.BYTES:  # the budget counts nothing else
            budget.charge(datatype, shape, what)
        if raw:
            data = codec.from_raw(raw[i], datatype, shape, what)
        else:
            data = _from_contents(tensor.contents, datatype, shape, what)
        inputs.append(V2Tensor(name, datatype, shape, data, parameters(tensor.parameters)))
    wanted = message.outputs
    outputs = (
        [RequestedOutput(o.name, parameters(o.parameters)) for o in wanted] if wanted else None
    )
    return V2Request(
        model=message.model_name,
        version=message.model_version or None,
        inputs=inputs,
        outputs=outputs,
        id=message.id or None,
        parameters=parameters(message.parameters),
    )


def heavy_request(message: pb.ModelInferRequest) -> bool:
    """Whether decoding `message` is worth a trip off the event loop. Its encoded
    size bounds the work: raw data, and every BYTES element or typed value takes
    at least a byte of it."""
    return int(message.ByteSize()) > codec.OFFLOAD_BYTES


def heavy_response(response: V2Response) -> bool:
    """Whether encoding `response` is worth a trip off the event loop."""
    return codec.heavy(t.data for t in response.outputs)


def _from_contents(
    contents: pb.InferTensorContents, datatype: Datatype, shape: tuple[int, ...], what: str
) -> Array:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"{what}: {datatype} data must be sent in raw_input_contents")
    values = getattr(contents, field)
    count = codec.element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"{what}: {len(values)} values for shape {list(shape)}")
    if datatype is Datatype.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)  # the count is within the request's element budget
        return codec.reshape(array, shape, what)
    # The field's own type, not numpy's guess: uint64 values on both sides of 2**63
    # would otherwise become float64 and be refused as non-integers.
    raw: Array = np.asarray(values, dtype=_FIELD_DTYPES[field])
    return codec.reshape(cast_checked(raw, datatype, what), shape, what)


def infer_response(response: V2Response) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id or ""
    )
    outputs, raw = message.outputs, message.raw_output_contents
    for tensor in response.outputs:
        # Attribute by attribute: several times cheaper than add(**fields) in upb.
        output = outputs.add()
        output.name = tensor.name
        output.datatype = tensor.datatype.value
        output.shape.extend(tensor.shape)
        raw.append(codec.to_raw(tensor.data))
    return message


def model_metadata(document: dict[str, Any]) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse()
    json_format.ParseDict(document, message)
    return message


def model_config(document: dict[str, Any]) -> pb.ModelConfigResponse:
    config = pb.ModelConfig()
    json_format.ParseDict(document, config)
    return pb.ModelConfigResponse(config=config)


def model_statistics(document: dict[str, Any]) -> pb.ModelStatisticsResponse:
    message = pb.ModelStatisticsResponse()
    json_format.ParseDict(document, message)
    return message


def repository_index(entries: list[dict[str, Any]]) -> pb.RepositoryIndexResponse:
    message = pb.RepositoryIndexResponse()
    json_format.ParseDict({"models": entries}, message)
    return message
