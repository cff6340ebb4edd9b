"""The gRPC server: grpc.aio in the HTTP server's process and event loop, with the
standard health service and server reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelplex.auth.authenticator import Authenticator
from modelplex.errors import ConfigurationError
from modelplex.grpc.door import AuthInterceptor
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
        *,
        shared: bool = False,
        authenticator: Authenticator | None = None,
    ) -> None:
        """`shared`: replica processes of this server bind the same port.
        `authenticator`: checks every call but health and reflection (None: none)."""
        # grpc core applies the receive limit to the decompressed message and stops
        # inflating there, so a compressed request cannot grow past it in memory.
        # grpcio sets SO_REUSEPORT by default: a second server on a taken port would
        # bind beside the first and share its clients; only our replicas may.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 1 if shared else 0),
            ],
            interceptors=[AuthInterceptor(authenticator, SERVICE)] if authenticator else [],
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
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.60 raises where older ones returned 0
            self.port = 0
        if self.port == 0:
            raise ConfigurationError(
                f"gRPC port {port} on {host} cannot be bound (in use by another process?)"
            )

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
