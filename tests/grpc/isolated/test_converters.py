"""`modelplex.grpc.converters`: protobuf messages <-> the protocol's typed values."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from modelplex.core.tensors import Datatype
from modelplex.errors import InvalidInput
from modelplex.grpc import converters
from modelplex.grpc.protos import inference_pb2 as pb
from modelplex.oip import codec
from modelplex.oip.service import CONFIG_TYPES, V2Request, V2Response, V2Service, V2Tensor

DIGIT = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
MAX_ELEMENTS = 1000


def infer_request(message: pb.ModelInferRequest) -> V2Request:
    return converters.infer_request(message, MAX_ELEMENTS)


def request(*inputs: tuple[str, str, list[int]], **fields: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", **fields)
    for name, datatype, shape in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
    return message


def framed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# -- infer_request: raw contents ---------------------------------------------------


def test_infer_request_from_raw_input_contents() -> None:
    message = request(("x", "FP32", [2, 2]), ("s", "BYTES", [2, 1]), id="r-1")
    message.raw_input_contents.append(struct.pack("<4f", 1.0, 2.5, -3.0, 0.25))
    message.raw_input_contents.append(framed(b"ab", b"\xff"))
    converted = infer_request(message)
    assert isinstance(converted, V2Request)
    assert (converted.model, converted.version, converted.id) == ("m", None, "r-1")
    assert converted.outputs is None  # none asked for: all of them
    assert converted.parameters == {}
    x, s = converted.inputs
    assert (x.name, x.datatype, x.shape) == ("x", Datatype.FP32, (2, 2))
    assert x.data.dtype == np.float32
    assert x.data.tolist() == [[1.0, 2.5], [-3.0, 0.25]]
    assert (s.name, s.datatype, s.shape) == ("s", Datatype.BYTES, (2, 1))
    assert s.data.tolist() == [[b"ab"], [b"\xff"]]


def test_raw_contents_take_precedence_over_typed_contents() -> None:
    message = request(("x", "INT32", [2]))
    message.inputs[0].contents.int_contents.extend([7, 8])
    message.raw_input_contents.append(struct.pack("<2i", 1, -1))
    assert infer_request(message).inputs[0].data.tolist() == [1, -1]


def test_fp16_is_read_from_raw_contents() -> None:
    message = request(("x", "FP16", [3]))
    message.raw_input_contents.append(struct.pack("<3e", 0.5, -2.0, 65504.0))
    (x,) = infer_request(message).inputs
    assert x.data.dtype == np.float16
    assert x.data.tolist() == [0.5, -2.0, 65504.0]


@pytest.mark.parametrize(("raw", "inputs"), [(1, 2), (2, 1), (3, 2)])
def test_raw_input_contents_must_match_the_inputs(raw: int, inputs: int) -> None:
    message = request(*[(f"x{i}", "FP32", [1]) for i in range(inputs)])
    message.raw_input_contents.extend([struct.pack("<f", 1.0)] * raw)
    with pytest.raises(InvalidInput) as caught:
        infer_request(message)
    assert caught.value.message == (
        f"{raw} raw_input_contents for {inputs} inputs: give one per input"
    )


def test_raw_contents_of_the_wrong_size() -> None:
    message = request(("x", "FP32", [1, 64]))
    message.raw_input_contents.append(b"\x00" * 255)
    with pytest.raises(InvalidInput) as caught:
        infer_request(message)
    assert caught.value.message == ("input 'x': 255 bytes for shape [1, 64] of FP32 (expected 256)")


def test_raw_bytes_framing_errors() -> None:
    message = request(("s", "BYTES", [1]))
    message.raw_input_contents.append(b"\x09\x00\x00\x00short")
    with pytest.raises(InvalidInput) as caught:
        infer_request(message)
    assert caught.value.message == "input 's': a BYTES element runs past the end of the data"


# -- infer_request: typed contents ---------------------------------------------


TYPED: list[tuple[Datatype, str, list[Any]]] = [
    (Datatype.BOOL, "bool_contents", [True, False]),
    (Datatype.INT8, "int_contents", [-128, 127]),
    (Datatype.INT16, "int_contents", [-(2**15), 2**15 - 1]),
    (Datatype.INT32, "int_contents", [-(2**31), 2**31 - 1]),
    (Datatype.INT64, "int64_contents", [-(2**63), 2**63 - 1]),
    (Datatype.UINT8, "uint_contents", [0, 255]),
    (Datatype.UINT16, "uint_contents", [0, 2**16 - 1]),
    (Datatype.UINT32, "uint_contents", [0, 2**32 - 1]),
    (Datatype.UINT64, "uint64_contents", [2**63, 2**64 - 1]),
    (Datatype.FP32, "fp32_contents", [0.5, -2.25]),
    (Datatype.FP64, "fp64_contents", [0.1, 1e300]),
    (Datatype.BYTES, "bytes_contents", [b"ab", b"\xff\x00"]),
]


def test_typed_cases_cover_every_contents_field() -> None:
    assert {d for d, _, _ in TYPED} == set(Datatype) - {Datatype.FP16}
    assert {f for _, f, _ in TYPED} == {f.name for f in pb.InferTensorContents.DESCRIPTOR.fields}


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED, ids=[d for d, _, _ in TYPED])
def test_infer_request_from_typed_contents(
    datatype: Datatype, field: str, values: list[Any]
) -> None:
    message = request(("x", datatype.value, [2, 1]))
    getattr(message.inputs[0].contents, field).extend(values)
    (x,) = infer_request(message).inputs
    assert x.datatype is datatype
    assert x.shape == (2, 1)
    assert x.data.dtype == datatype.numpy_dtype
    assert x.data.reshape(-1).tolist() == values


def test_uint64_contents_on_both_sides_of_2_to_the_63() -> None:
    message = request(("x", "UINT64", [2]))
    message.inputs[0].contents.uint64_contents.extend([1, 2**63])
    (x,) = infer_request(message).inputs
    assert x.data.tolist() == [1, 2**63]


def test_empty_typed_contents_for_an_empty_shape() -> None:
    (x,) = infer_request(request(("x", "FP32", [0, 3]))).inputs
    assert x.data.shape == (0, 3)
    assert x.data.dtype == np.float32


@pytest.mark.parametrize(
    ("datatype", "field", "values", "shape", "message"),
    [
        ("FP32", "fp32_contents", [1.0, 2.0, 3.0], [2], "input 'x': 3 values for shape [2]"),
        ("BYTES", "bytes_contents", [b"a"], [1, 2], "input 'x': 1 values for shape [1, 2]"),
        # Values in another datatype's field are not read.
        ("INT32", "int64_contents", [1, 2], [2], "input 'x': 0 values for shape [2]"),
        ("FP16", "fp32_contents", [1.0], [1],
         "input 'x': FP16 data must be sent in raw_input_contents"),
        ("INT8", "int_contents", [200], [1], "input 'x' has values out of range for INT8"),
        ("UINT16", "uint_contents", [70_000], [1], "input 'x' has values out of range for UINT16"),
    ],
)  # fmt: skip
def test_typed_contents_errors(
    datatype: str, field: str, values: list[Any], shape: list[int], message: str
) -> None:
    converted = request(("x", datatype, shape))
    getattr(converted.inputs[0].contents, field).extend(values)
    with pytest.raises(InvalidInput) as caught:
        infer_request(converted)
    assert caught.value.message == message


def test_unknown_datatype_and_hostile_shape() -> None:
    with pytest.raises(InvalidInput) as caught:
        infer_request(request(("x", "FLOAT", [1])))
    assert caught.value.message.startswith("unknown datatype 'FLOAT'")
    with pytest.raises(InvalidInput) as caught:
        infer_request(request(("x", "FP32", [-1])))
    assert caught.value.message == (
        f"input 'x': shape must be a list of integers between 0 and {codec.MAX_DIM}"
    )
    with pytest.raises(InvalidInput) as caught:
        infer_request(request(("x", "FP32", [1] * 33)))
    assert caught.value.message == "input 'x': a shape has at most 32 dimensions"


def test_infer_request_version_outputs_and_parameters() -> None:
    message = request(("x", "fp32", [1]), model_version="2", id="")
    message.inputs[0].contents.fp32_contents.append(1.0)
    message.inputs[0].parameters["binary_data_size"].int64_param = 4
    message.parameters["timeout"].int64_param = 250_000
    message.parameters["priority"].uint64_param = 3
    wanted = message.outputs.add(name="probabilities")
    wanted.parameters["classification"].int64_param = 2
    message.outputs.add(name="label")
    converted = infer_request(message)
    assert (converted.version, converted.id) == ("2", None)
    assert converted.parameters == {"timeout": 250_000, "priority": 3}
    assert converted.inputs[0].datatype is Datatype.FP32  # names are case-insensitive
    assert converted.inputs[0].parameters == {"binary_data_size": 4}
    assert converted.outputs is not None
    assert [(o.name, o.parameters) for o in converted.outputs] == [
        ("probabilities", {"classification": 2}),
        ("label", {}),
    ]


# -- parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bool_param", True),
        ("bool_param", False),
        ("int64_param", -(2**63)),
        ("string_param", "héllo"),
        ("double_param", 0.125),
        ("uint64_param", 2**64 - 1),
    ],
)
def test_parameter_value_of_each_choice(field: str, value: Any) -> None:
    parameter = pb.InferParameter(**{field: value})
    assert parameter.WhichOneof("parameter_choice") == field
    converted = converters.parameter_value(parameter)
    assert converted == value
    assert type(converted) is type(value)


def test_parameter_value_of_an_unset_parameter() -> None:
    assert converters.parameter_value(pb.InferParameter()) is None


def test_repository_parameters() -> None:
    load = pb.RepositoryModelLoadRequest(model_name="m")
    load.parameters["config"].string_param = "{}"
    load.parameters["file:1/model.onnx"].bytes_param = b"\x00\x01"
    load.parameters["flag"].bool_param = True
    assert converters.parameters(load.parameters) == {
        "config": "{}",
        "file:1/model.onnx": b"\x00\x01",
        "flag": True,
    }
    assert converters.parameters(pb.RepositoryModelLoadRequest().parameters) == {}


# -- infer_response ------------------------------------------------------------


def test_infer_response_raw_contents_round_trip() -> None:
    scores = np.array([[0.5, -1.0, 2.0], [3.0, 4.5, -0.0]], dtype=np.float32)
    labels = np.array([2, -7], dtype=np.int64)
    names = np.empty((2, 1), dtype=object)
    names[:, 0] = [b"two", b"\xfe"]
    outputs = [
        V2Tensor("scores", Datatype.FP32, scores.shape, scores, {"classification": 0}),
        V2Tensor("label", Datatype.INT64, labels.shape, labels),
        V2Tensor("name", Datatype.BYTES, names.shape, names),
    ]
    message = converters.infer_response(V2Response("digits", "2", outputs, id="r-9"))
    assert (message.model_name, message.model_version, message.id) == ("digits", "2", "r-9")
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [
        ("scores", "FP32", [2, 3]),
        ("label", "INT64", [2]),
        ("name", "BYTES", [2, 1]),
    ]
    assert len(message.raw_output_contents) == 3
    assert message.raw_output_contents[1] == struct.pack("<2q", 2, -7)
    assert message.raw_output_contents[2] == framed(b"two", b"\xfe")
    for sent, out, raw in zip(outputs, message.outputs, message.raw_output_contents, strict=True):
        back = codec.from_raw(raw, Datatype(out.datatype), tuple(out.shape), out.name)
        assert back.dtype == sent.data.dtype
        assert back.tolist() == sent.data.tolist()
    # Decoded again by a client, the wire form is the same message.
    assert pb.ModelInferResponse.FromString(message.SerializeToString()) == message


def test_infer_response_without_an_id() -> None:
    message = converters.infer_response(V2Response("m", "1", []))
    assert message.id == ""
    assert list(message.outputs) == []
    assert list(message.raw_output_contents) == []


# -- documents from the service ----------------------------------------------


@pytest.mark.anyio
async def test_model_metadata_message(service: V2Service) -> None:
    message = converters.model_metadata(service.model_metadata("digits", None))
    assert isinstance(message, pb.ModelMetadataResponse)
    assert (message.name, list(message.versions), message.platform) == (
        "digits",
        ["1", "2"],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [
        ("pixels", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 10]),
    ]


@pytest.mark.anyio
async def test_model_config_message(service: V2Service) -> None:
    config = converters.model_config(service.model_config("digits", None)).config
    assert (config.name, config.platform, config.backend) == ("digits", "onnxruntime_onnx", "onnx")
    assert config.max_batch_size == 64
    assert config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixels", pb.TYPE_FP32, [64])
    ]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in config.output] == [
        ("label", pb.TYPE_INT64, [], ""),
        ("probabilities", pb.TYPE_FP32, [10], "labels.txt"),
    ]
    (group,) = config.instance_group
    assert (group.name, group.kind, group.count) == ("digits", pb.ModelInstanceGroup.KIND_CPU, 1)
    doubler = converters.model_config(service.model_config("doubler", None)).config
    assert doubler.instance_group[0].count == 2
    assert doubler.max_batch_size == 8
    assert doubler.dynamic_batching.max_queue_delay_microseconds == 5000


def test_every_config_type_is_in_the_proto_enum() -> None:
    for datatype, name in CONFIG_TYPES.items():
        assert pb.DataType.Name(pb.DataType.Value(name)) == name, datatype


@pytest.mark.anyio
async def test_model_statistics_message(service: V2Service) -> None:
    await service.infer(
        V2Request("digits", "2", [V2Tensor("pixels", Datatype.FP32, DIGIT.shape, DIGIT)])
    )
    document = service.model_statistics("digits", None)
    message = converters.model_statistics(document)
    assert [(s.name, s.version) for s in message.model_stats] == [("digits", "1"), ("digits", "2")]
    idle, used = message.model_stats
    assert (used.inference_count, used.execution_count) == (1, 1)
    assert used.last_inference == document["model_stats"][1]["last_inference"] > 0
    assert used.inference_stats.success.count == 1
    assert (
        used.inference_stats.success.ns
        == document["model_stats"][1]["inference_stats"]["success"]["ns"]
    )
    assert used.inference_stats.fail.count == 0
    assert [(b.batch_size, b.compute_infer.count) for b in used.batch_stats] == [(1, 1)]
    assert (idle.inference_count, list(idle.batch_stats)) == (0, [])


@pytest.mark.anyio
async def test_repository_index_message(service: V2Service) -> None:
    message = converters.repository_index(service.repository_index(ready_only=False))
    models = {m.name: m for m in message.models}
    assert sorted(models) == ["animals", "broken", "crashes", "digits", "doubler", "slow"]
    assert (models["digits"].state, models["digits"].version, models["digits"].reason) == (
        "READY",
        "2",
        "",
    )
    assert models["broken"].state == "FAILED"
    assert models["broken"].version == ""
    assert models["broken"].reason == service.repository_index(False)[1]["reason"]
    ready = converters.repository_index(service.repository_index(ready_only=True))
    assert "broken" not in [m.name for m in ready.models]
    assert converters.repository_index([]) == pb.RepositoryIndexResponse()
