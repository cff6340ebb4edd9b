"""gRPC's one enforcement point: a server interceptor that authenticates each
call from its `authorization` metadata with the same `Authenticator` as REST,
checks the method's scope from the same table (`auth.access`) and the model a
request names against the allow-list. A stream's requests each name their
model: each is checked as it is read (its answer is the error, as for any
request of a stream that fails)."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelplex.auth.access import GRPC_OPEN, GRPC_SCOPES, require, require_model
from modelplex.auth.authenticator import Authenticator, credentials_from_headers
from modelplex.auth.principal import OPEN, Principal, Scope
from modelplex.error_map import public_message, wire_error
from modelplex.errors import ModelplexError

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "grpc_principal", default=OPEN
)


def current_principal() -> Principal:
    """The principal of the RPC being served (tasks it starts inherit it)."""
    return _principal.get()


def request_model(request: Any) -> tuple[str, str | None] | None:
    """The model (and version) a request message names, if any."""
    name = getattr(request, "model_name", "") or getattr(request, "name", "")
    if not name:
        return None
    version = getattr(request, "model_version", "") or getattr(request, "version", "")
    return name, version or None


def check_model(request: Any) -> None:
    named = request_model(request)
    if named is not None:
        require_model(current_principal(), *named)


async def _abort(context: grpc.aio.ServicerContext, exc: ModelplexError) -> None:
    code = grpc.StatusCode[wire_error(exc).grpc_code.value]
    await context.abort(code, public_message(exc))


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator, service: str) -> None:
        self.authenticator = authenticator
        self.prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not self.authenticator.mode.enforcing:
            return handler
        if not method.startswith(self.prefix):
            return handler  # health and reflection: open, as REST's probes
        name = method[len(self.prefix) :]
        if name in GRPC_OPEN:
            return handler
        scope = GRPC_SCOPES.get(name, Scope.ADMIN)
        metadata = dict(details.invocation_metadata or ())
        authorization = metadata.get("authorization")
        api_key = metadata.get("x-api-key")

        async def admit(context: grpc.aio.ServicerContext) -> bool:
            try:
                token = credentials_from_headers(
                    str(authorization) if authorization else None,
                    str(api_key) if api_key else None,
                )
                principal = await self.authenticator.authenticate(token)
                require(principal, scope)
            except ModelplexError as exc:
                await _abort(context, exc)
                return False
            _principal.set(principal)
            return True

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if not await admit(context):
                    return None
                try:
                    check_model(request)
                except ModelplexError as exc:
                    await _abort(context, exc)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                if not await admit(context):
                    return
                async for answer in inner_stream(requests, context):
                    yield answer

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
