"""`modelplex.grpc.servicer` behind a real `modelplex.grpc.server.GrpcServer` (grpc.aio),
driven with the generated stub over a local channel."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # isort: skip  (tests/grpc/ makes ruff count `grpc` as first-party)
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplex.core.tensors import Datatype
from modelplex.grpc.protos import inference_pb2 as pb
from modelplex.grpc.protos import inference_pb2_grpc
from modelplex.grpc.server import SERVICE, GrpcServer
from modelplex.oip import codec
from modelplex.oip.service import V2Request, V2Service, V2Tensor
from tests.oip.harness import open_service

pytestmark = pytest.mark.anyio

DIGITS = (np.arange(3 * 64, dtype=np.float32).reshape(3, 64) * 7) % 17
SHORT_DEADLINE_S = 0.2  # the slow model sleeps 2 s


@dataclass
class Connected:
    server: GrpcServer
    stub: inference_pb2_grpc.GRPCInferenceServiceStub
    health: health_pb2_grpc.HealthStub


@pytest.fixture
async def connected(service: V2Service) -> AsyncIterator[Connected]:
    server = GrpcServer(service, "127.0.0.1", 0, 16 * 1024 * 1024, 1_000_000)
    assert server.port > 0
    await server.start()
    # The generated stub is untyped (as in modelplex.grpc.server).
    make_stub: Callable[[grpc.aio.Channel], Any] = inference_pb2_grpc.GRPCInferenceServiceStub
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Connected(server, make_stub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await server.stop()


def doubler(values: list[list[float]], request_id: str = "") -> pb.ModelInferRequest:
    x = np.array(values, dtype=np.float32)
    message = pb.ModelInferRequest(model_name="doubler", id=request_id)
    message.inputs.add(name="x", datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(codec.to_raw(x))
    return message


def pixels(data: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="pixels", datatype="FP32", shape=data.shape)
    message.raw_input_contents.append(codec.to_raw(data))
    return message


def decoded(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: codec.from_raw(raw, Datatype(out.datatype), tuple(out.shape), out.name)
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def test_server_live_ready_and_metadata(connected: Connected) -> None:
    assert (await connected.stub.ServerLive(pb.ServerLiveRequest())).live is True
    assert (await connected.stub.ServerReady(pb.ServerReadyRequest())).ready is True
    metadata = await connected.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "modelplex"
    assert "classification" in metadata.extensions


async def test_server_ready_follows_the_readiness_policy(tmp_path: Path) -> None:
    """An empty repository: no model READY, so not ready, as `/readyz` says."""
    (tmp_path / "empty").mkdir()
    async with open_service(tmp_path / "empty", tmp_path) as service:
        server = GrpcServer(service, "127.0.0.1", 0, 16 * 1024 * 1024, 1_000_000)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                make_stub: Callable[[grpc.aio.Channel], Any] = (
                    inference_pb2_grpc.GRPCInferenceServiceStub
                )
                stub = make_stub(channel)
                assert (await stub.ServerReady(pb.ServerReadyRequest())).ready is False
        finally:
            await server.stop()


async def test_model_ready(connected: Connected) -> None:
    stub = connected.stub
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="digits"))).ready is True
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="1"))).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="broken"))).ready is False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "model 'nope' does not exist"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="7"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "model 'digits' has no version '7'"


async def test_model_infer_answers_what_the_service_computes(
    connected: Connected, service: V2Service
) -> None:
    message = pixels(DIGITS)
    message.id = "req-7"
    response = await connected.stub.ModelInfer(message)
    assert (response.model_name, response.model_version, response.id) == ("digits", "2", "req-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "INT64", [3]),
        ("probabilities", "FP32", [3, 10]),
    ]
    direct = await service.infer(
        V2Request("digits", None, [V2Tensor("pixels", Datatype.FP32, DIGITS.shape, DIGITS)])
    )
    got = decoded(response)
    for tensor in direct.outputs:
        np.testing.assert_array_equal(got[tensor.name], tensor.data)


async def test_model_infer_with_typed_contents_and_a_requested_output(
    connected: Connected,
) -> None:
    message = pb.ModelInferRequest(model_name="doubler", model_version="1")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    message.outputs.add(name="y")
    response = await connected.stub.ModelInfer(message)
    assert response.model_version == "1"
    assert decoded(response)["y"].tolist() == [[3.0, -4.0]]
    assert response.raw_output_contents[0] == struct.pack("<2f", 3.0, -4.0)


async def test_model_infer_invalid_argument_carries_the_validators_message(
    connected: Connected,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connected.stub.ModelInfer(pixels(DIGITS[:1, :63]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "input 'pixels' has shape [1, 63], instances of shape [63]; "
        "the model takes instances of shape [64]"
    )


async def test_model_infer_converter_errors_are_invalid_argument(connected: Connected) -> None:
    message = pixels(DIGITS[:1])
    message.raw_input_contents.append(b"extra")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connected.stub.ModelInfer(message)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "2 raw_input_contents for 1 inputs: give one per input"


async def test_model_infer_status_codes(connected: Connected) -> None:
    stub = connected.stub
    cases = [
        (pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND),
        (pb.ModelInferRequest(model_name="broken"), grpc.StatusCode.UNAVAILABLE),
    ]
    for message, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(message)
        assert caught.value.code() is code, message.model_name
    crash = doubler([[1.0, 2.0]])
    crash.model_name = "crashes"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(crash)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    # The model's own exception text stays inside the server.
    assert caught.value.details() == "model 'crashes:1' failed on a batch of 1 rows"


async def test_a_deadline_shorter_than_the_model_is_deadline_exceeded(
    connected: Connected,
) -> None:
    message = doubler([[1.0, 2.0]])
    message.model_name = "slow"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connected.stub.ModelInfer(message, timeout=SHORT_DEADLINE_S)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_stream_answers_every_request_and_an_invalid_one_with_its_error(
    connected: Connected,
) -> None:
    good = {f"ok-{i}": [[float(i), -1.0]] for i in range(4)}
    bad = doubler([[1.0, 2.0, 3.0]], request_id="bad")  # x takes instances of shape [2]
    messages = [doubler(values, request_id) for request_id, values in good.items()]
    messages.insert(2, bad)

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for message in messages:
            yield message

    answers = {}
    async for answer in connected.stub.ModelStreamInfer(requests()):
        answers[answer.infer_response.id] = answer
    assert sorted(answers) == ["bad", *sorted(good)]
    assert answers["bad"].error_message == (
        "input 'x' has shape [1, 3], instances of shape [3]; the model takes instances of shape [2]"
    )
    for request_id, values in good.items():
        answer = answers[request_id]
        assert answer.error_message == ""
        assert answer.infer_response.model_name == "doubler"
        assert decoded(answer.infer_response)["y"].tolist() == [[2 * v for v in values[0]]]


async def test_an_empty_stream_ends(connected: Connected) -> None:
    messages: list[pb.ModelInferRequest] = []

    async def nothing() -> AsyncIterator[pb.ModelInferRequest]:
        for message in messages:
            yield message

    answers = [answer async for answer in connected.stub.ModelStreamInfer(nothing())]
    assert answers == []


async def test_metadata_config_statistics_and_index(connected: Connected) -> None:
    stub = connected.stub
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits", version="1"))
    assert (metadata.platform, list(metadata.versions)) == ("sklearn", ["1", "2"])
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name="digits"))).config
    assert config.max_batch_size == 64
    assert config.output[1].label_filename == "labels.txt"
    await stub.ModelInfer(doubler([[1.0, 2.0], [3.0, 4.0]]))
    stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="doubler", version="2"))
    assert [(s.version, s.inference_count) for s in stats.model_stats] == [("2", 2)]
    everything = await stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert {s.name for s in everything.model_stats} >= {"digits", "doubler", "slow"}
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [m.name for m in index.models] == ["animals", "crashes", "digits", "doubler", "slow"]
    not_found: list[tuple[Any, Any]] = [
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        (stub.ModelConfig, pb.ModelConfigRequest(name="digits", version="9")),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="digits", version="9")),
    ]
    for rpc, message in not_found:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(message)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_repository_load_and_unload(connected: Connected) -> None:
    stub = connected.stub
    load = pb.RepositoryModelLoadRequest(model_name="doubler")
    load.parameters["config"].string_param = "{}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RepositoryModelLoad(load)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="doubler"))
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="doubler"))).ready is False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(doubler([[1.0, 2.0]]))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="doubler"))
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="doubler"))).ready is True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_service_is_serving(connected: Connected) -> None:
    for name in ("", SERVICE):
        answer = await connected.health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
    assert SERVICE == "inference.GRPCInferenceService"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connected.health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_stop_marks_the_services_not_serving(service: V2Service) -> None:
    server = GrpcServer(service, "127.0.0.1", 0, 16 * 1024 * 1024, 1_000_000)
    await server.start()
    await server.stop(grace_s=1.0)
    for name in ("", SERVICE):
        answer = await server.health.Check(health_pb2.HealthCheckRequest(service=name), None)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING, name
