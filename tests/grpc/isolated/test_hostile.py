"""Hostile gRPC requests over a real socket: each gets its stable status, and the
server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc  # isort: skip  (tests/grpc/ makes ruff count `grpc` as first-party)
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplex.grpc import converters
from modelplex.grpc.protos import inference_pb2 as pb
from modelplex.grpc.protos import inference_pb2_grpc
from modelplex.grpc.server import GrpcServer
from modelplex.oip import codec
from modelplex.oip.service import V2Service

pytestmark = pytest.mark.anyio

MESSAGE_LIMIT = 1024 * 1024
ELEMENT_LIMIT = 1_048_576
WAIT_S = 10.0  # bounds every wait; the tests finish far sooner when they pass


@pytest.fixture
async def address(service: V2Service) -> AsyncIterator[str]:
    server = GrpcServer(service, "127.0.0.1", 0, 32 * MESSAGE_LIMIT, ELEMENT_LIMIT)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop()


@pytest.fixture
async def stub(address: str) -> AsyncIterator[Any]:
    make_stub: Callable[[grpc.aio.Channel], Any] = inference_pb2_grpc.GRPCInferenceServiceStub
    async with grpc.aio.insecure_channel(address) as channel:
        yield make_stub(channel)


def bytes_request(raw: bytes, shape: list[int]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="doubler")
    message.inputs.add(name="x", datatype="BYTES", shape=shape)
    message.raw_input_contents.append(raw)
    return message


async def assert_still_serving(stub: Any) -> None:
    message = pb.ModelInferRequest(model_name="doubler")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(struct.pack("<2f", 1.0, 2.0))
    response = await stub.ModelInfer(message, timeout=WAIT_S)
    assert response.raw_output_contents[0] == struct.pack("<2f", 2.0, 4.0)


async def test_a_compressed_message_cannot_inflate_past_the_receive_limit(
    service: V2Service,
) -> None:
    server = GrpcServer(service, "127.0.0.1", 0, MESSAGE_LIMIT, ELEMENT_LIMIT)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.insecure_channel(address, compression=grpc.Compression.Gzip) as ch:
            stub: Any = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
            # 32 MiB of zeros: about 32 KiB on the wire, 32 times the limit once inflated.
            bomb = pb.ModelInferRequest(model_name="digits")
            bomb.inputs.add(name="pixels", datatype="FP32", shape=[128 * 1024, 64])
            bomb.raw_input_contents.append(bytes(32 * MESSAGE_LIMIT))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(bomb, timeout=WAIT_S)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await assert_still_serving(stub)  # compressed, under the limit: served
    finally:
        await server.stop()


async def test_too_many_bytes_elements_are_refused_before_decoding(stub: Any) -> None:
    count = 4 * 1024 * 1024  # 16 MiB of empty elements
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(bytes_request(bytes(4 * count), [count]), timeout=WAIT_S)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == (
        f"input 'x': a request carries at most {ELEMENT_LIMIT} BYTES elements"
    )
    # Typed contents are charged from the shape too, before a value is read.
    typed = pb.ModelInferRequest(model_name="doubler")
    typed.inputs.add(name="x", datatype="BYTES", shape=[ELEMENT_LIMIT + 1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(typed, timeout=WAIT_S)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_still_serving(stub)


async def test_a_short_shape_over_many_elements_stops_early(stub: Any) -> None:
    raw = (struct.pack("<I", 1) + b"a") * (3 * 1024 * 1024)  # 3 Mi one-byte elements
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(bytes_request(raw, [2]), timeout=WAIT_S)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'x': more than 2 BYTES elements for shape [2]"
    await assert_still_serving(stub)


async def test_a_heavy_bytes_request_is_decoded_while_others_are_served(
    stub: Any, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode of a large request waits, inside, until a health check and an
    ordinary request were answered: only a decode off the event loop lets them through."""
    decoding, others_answered = threading.Event(), threading.Event()
    real = converters.infer_request

    def held_decode(message: pb.ModelInferRequest, max_elements: int) -> Any:
        decoding.set()
        others_answered.wait(WAIT_S)
        return real(message, max_elements)

    monkeypatch.setattr(converters, "infer_request", held_decode)
    # A legal heavy tensor: a million elements of different lengths (no fast path).
    items = [b"x" * (i % 7) for i in range(ELEMENT_LIMIT)]
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    heavy = asyncio.ensure_future(stub.ModelInfer(bytes_request(raw, [ELEMENT_LIMIT]), timeout=30))
    assert await asyncio.to_thread(decoding.wait, WAIT_S), "the heavy request never arrived"
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    monkeypatch.setattr(converters, "infer_request", real)  # the ordinary request's own
    await assert_still_serving(stub)
    assert not heavy.done()  # it is still held in its decode
    others_answered.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # decoded, then judged by the model
        await heavy
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in caught.value.details()


def test_the_offload_thresholds_leave_small_requests_on_the_loop() -> None:
    small = bytes_request(struct.pack("<I", 0) * 10, [10])
    assert not converters.heavy_request(small)
    numbers = pb.ModelInferRequest(model_name="digits")
    numbers.inputs.add(name="pixels", datatype="FP32", shape=[64, 64])  # a full batch, 16 KiB
    numbers.raw_input_contents.append(np.zeros((64, 64), np.float32).tobytes())
    assert not converters.heavy_request(numbers)
    flood = bytes_request(struct.pack("<I", 0) * (codec.OFFLOAD_BYTES // 4), [1])
    assert converters.heavy_request(flood)
    typed = pb.ModelInferRequest(model_name="digits")
    typed.inputs.add(name="x", datatype="BOOL", shape=[1]).contents.bool_contents.extend(
        [True] * codec.OFFLOAD_BYTES
    )
    assert converters.heavy_request(typed)
