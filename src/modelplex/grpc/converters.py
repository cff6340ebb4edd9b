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
    return {key: parameter_value(value) for key, value in mapping.items()}


def infer_request(message: pb.ModelInferRequest, max_elements: int) -> V2Request:
    """The request's tensors, decoded; at most `max_elements` BYTES elements in all."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: give one per input"
        )
    budget = codec.ElementBudget(max_elements)
    inputs = []
    for i, tensor in enumerate(message.inputs):
        what = f"input '{tensor.name}'"
        datatype = codec.datatype_of(tensor.datatype)
        shape = codec.check_shape(list(tensor.shape), what)
        budget.charge(datatype, shape, what)
        if raw:
            data = codec.from_raw(raw[i], datatype, shape, what)
        else:
            data = _from_contents(tensor.contents, datatype, shape, what)
        inputs.append(V2Tensor(tensor.name, datatype, shape, data, parameters(tensor.parameters)))
    outputs = [RequestedOutput(o.name, parameters(o.parameters)) for o in message.outputs]
    return V2Request(
        model=message.model_name,
        version=message.model_version or None,
        inputs=inputs,
        outputs=outputs or None,
        id=message.id or None,
        parameters=parameters(message.parameters),
    )


def heavy_request(message: pb.ModelInferRequest) -> bool:
    """Whether decoding `message` is worth a trip off the event loop."""
    raw = message.raw_input_contents
    if sum(map(len, raw)) > codec.OFFLOAD_BYTES:
        return True
    # Element by element work: BYTES elements, and numbers in typed contents.
    return any(
        (not raw or t.datatype.upper() == "BYTES")
        and len(t.shape) <= codec.MAX_DIMS
        and codec.element_count(tuple(t.shape)) > codec.OFFLOAD_ELEMENTS
        for t in message.inputs
    )


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
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype.value, shape=tensor.shape)
        message.raw_output_contents.append(codec.to_raw(tensor.data))
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
