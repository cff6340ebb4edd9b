"""`inference.GRPCInferenceService`: every RPC translates and calls `V2Service`.

Every RPC goes through `_guard`, which turns domain errors into gRPC status
codes with the one error table, so no RPC can answer differently from REST.
The client's deadline becomes the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from modelplex.core.offload import cpu_bound
from modelplex.error_map import public_message, wire_error
from modelplex.errors import ModelplexError
from modelplex.grpc import converters
from modelplex.grpc.door import check_model
from modelplex.grpc.protos import inference_pb2 as pb
from modelplex.grpc.protos import inference_pb2_grpc
from modelplex.oip.service import V2Request, V2Response, V2Service

log = logging.getLogger(__name__)

T = TypeVar("T")
STREAM_IN_FLIGHT = 64


def status_of(exc: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode[wire_error(exc).grpc_code.value]


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except ModelplexError as exc:
        await context.abort(status_of(exc), public_message(exc))
    except Exception as exc:
        log.error("gRPC call failed", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, public_message(exc))
    raise AssertionError("context.abort always raises")  # for the type checker


def _deadline_ms(context: grpc.aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(1, int(remaining * 1000))


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: V2Service, max_tensor_elements: int) -> None:
        self._service = service
        self._max_elements = max_tensor_elements

    async def _decode(self, message: pb.ModelInferRequest) -> V2Request:
        if converters.heavy_request(message):
            return await cpu_bound(converters.infer_request, message, self._max_elements)
        return converters.infer_request(message, self._max_elements)

    async def _encode(self, response: V2Response) -> pb.ModelInferResponse:
        if converters.heavy_response(response):
            return await cpu_bound(converters.infer_response, response)
        return converters.infer_response(response)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.server_ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def call() -> pb.ModelReadyResponse:
            ready = self._service.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await _guard(context, call)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._service.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def call() -> pb.ModelMetadataResponse:
            document = self._service.model_metadata(request.name, request.version or None)
            return converters.model_metadata(document)

        return await _guard(context, call)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        # `_guard`, `_decode` and `_encode` inlined: the hottest RPC saves three
        # coroutines per call.
        arrived = time.monotonic()
        try:
            if converters.heavy_request(request):
                v2_request = await cpu_bound(converters.infer_request, request, self._max_elements)
            else:
                v2_request = converters.infer_request(request, self._max_elements)
            v2_request.arrived_at = arrived
            v2_request.timeout_ms = _deadline_ms(context)
            response = await self._service.infer(v2_request)
            if converters.heavy_response(response):
                return await cpu_bound(converters.infer_response, response)
            return converters.infer_response(response)
        except ModelplexError as exc:
            await context.abort(status_of(exc), public_message(exc))
        except Exception as exc:
            log.error("gRPC call failed", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, public_message(exc))
        raise AssertionError("context.abort always raises")  # for the type checker

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently (so they batch together); each answer, or the
        error of that one request, is sent as soon as it is ready."""
        # A place at the gate is held from reading a request until its answer is
        # written, so running requests plus unsent answers stay within
        # STREAM_IN_FLIGHT: a client that reads slowly holds back its own reader.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        gate = asyncio.Semaphore(STREAM_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()

        async def one(message: Any) -> None:
            try:
                check_model(message)  # the allow-list, per request of the stream
                v2_request = await self._decode(message)
                v2_request.timeout_ms = _deadline_ms(context)
                response = await self._encode(await self._service.infer(v2_request))
                answer = pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                if not isinstance(exc, ModelplexError):
                    log.error("stream request failed", exc_info=exc)
                answer = pb.ModelStreamInferResponse(error_message=public_message(exc))
                answer.infer_response.id = message.id
            answers.put_nowait(answer)

        async def read() -> None:
            try:
                async for message in requests:
                    await gate.acquire()
                    task = asyncio.create_task(one(message), name="stream-infer")
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.gather(*running, return_exceptions=True)
            except Exception as exc:  # the client's stream broke: end ours
                log.info("stream reader stopped: %s", exc)
            finally:
                # The end marker must always arrive, or the writer waits forever.
                answers.put_nowait(None)

        reader = asyncio.create_task(read(), name="stream-reader")
        try:
            while (answer := await answers.get()) is not None:
                yield answer
                gate.release()
        finally:
            tasks = [reader, *running]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def call() -> pb.ModelConfigResponse:
            document = self._service.model_config(request.name, request.version or None)
            return converters.model_config(document)

        return await _guard(context, call)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def call() -> pb.ModelStatisticsResponse:
            document = self._service.model_statistics(request.name or None, request.version or None)
            return converters.model_statistics(document)

        return await _guard(context, call)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        async def call() -> pb.RepositoryIndexResponse:
            return converters.repository_index(self._service.repository_index(request.ready))

        return await _guard(context, call)

    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def call() -> pb.RepositoryModelLoadResponse:
            await self._service.load(request.model_name, converters.parameters(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await _guard(context, call)

    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def call() -> pb.RepositoryModelUnloadResponse:
            await self._service.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _guard(context, call)
