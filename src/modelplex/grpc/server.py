"""The gRPC server: grpc.aio in the HTTP server's process and event loop, with the
standard health service and server reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelplex.grpc.protos import inference_pb2, inference_pb2_grpc
from modelplex.grpc.servicer import InferenceServicer
from modelplex.oip.service import V2Service

log = logging.getLogger(__name__)

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class GrpcServer:
    def __init__(
        self,
        service: V2Service,
        host: str,
        port: int,
        max_message_bytes: int,
        max_tensor_elements: int,
    ) -> None:
        # grpc core applies the receive limit to the decompressed message and stops
        # inflating there, so a compressed request cannot grow past it in memory.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
            ]
        )
        register: Callable[[Any, Any], None] = (
            inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
        )
        register(InferenceServicer(service, max_tensor_elements), self._server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server,
        )  # fmt: skip
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    async def start(self) -> None:
        await self._server.start()
        # Serving as soon as the server answers; readiness is per model (ModelReady).
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC listening on port %d", self.port)

    async def stop(self, grace_s: float = 5.0) -> None:
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace_s)
