"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

`RequestContextMiddleware` does the per-request work every route needs:
* assigns the request id (the client's valid `X-Request-ID`, else a new one),
  stores it in `scope["state"]` and puts it on every response;
* enforces the request body limit, up front from `Content-Length` and while
  reading a chunked body: the route's (files may be large on the upload routes),
  and never more than `max_json_bytes` for a body declared as JSON;
* refuses a request at once with RESOURCE_EXHAUSTED (503, `Retry-After`) while
  `max_inflight` others are in progress in this process (health probes are never
  refused: an orchestrator must see a busy server as alive);
* renders any exception nothing else handled as an INTERNAL problem, so no
  stack trace reaches a client;
* hands the hottest route (`POST /v1/models/{model}/predict`) to its handler
  directly when given a `shortcut`: FastAPI's router and middleware layers cost
  about as much as running a small scikit-learn model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplex.api.payloads import is_json
from modelplex.api.problems import error_response
from modelplex.errors import InternalError, ModelplexError, PayloadTooLarge, ResourceExhausted

log = logging.getLogger(__name__)

_DRAIN_BYTES = 4 * 1024 * 1024
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_PROBES = ("/healthz", "/readyz", "/v2/health/")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        upload_limits: dict[str, int] | None = None,
        max_json_bytes: int | None = None,
        shortcut: Callable[[Scope], ASGIApp | None] | None = None,
        max_inflight: int = 0,
        authorize: Callable[[Scope], Awaitable[None]] | None = None,
    ) -> None:
        """`shortcut`: the app that serves a request past the router, or None.
        `max_inflight`: requests in progress at once (0: no bound).
        `authorize`: the door (`api.door.RestDoor`): raises for a request that
        may not pass, before its body is read."""
        self.app = app
        self.authorize = authorize
        self.max_inflight = max_inflight
        self.inflight = 0
        self.shortcut = shortcut
        self.max_body_bytes = max_body_bytes
        self.upload_limits = upload_limits or {}
        self.max_json_bytes = max_json_bytes

    def _limit(self, scope: Scope) -> int:
        path = scope.get("path", "")
        limit = self.max_body_bytes
        for prefix, upload_limit in self.upload_limits.items():
            if path == prefix or path.startswith(prefix + "/"):
                limit = upload_limit
                break
        if self.max_json_bytes is not None and _declares_json(scope):
            # What parses a JSON body holds every value as an object: a JSON body is
            # refused at this size before it is read, not after it is parsed.
            limit = min(limit, self.max_json_bytes)
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        if self.authorize is not None:
            try:
                await self.authorize(scope)
            except ModelplexError as exc:
                response = error_response(exc, request_id, scope.get("path"))
                if _has_body(scope) or (_content_length(scope) or 0) > 0:
                    response.headers["Connection"] = "close"  # its body is not read
                await response(scope, receive, send_with_id)
                return

        limit = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(declared, limit, scope, receive, send_with_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(self._too_large(limit))
            return message

        if (
            self.max_inflight
            and self.inflight >= self.max_inflight
            and not scope.get("path", "").startswith(_PROBES)
        ):
            await self._overloaded(scope, receive, send_with_id)
            return
        app = (self.shortcut(scope) if self.shortcut else None) or self.app
        self.inflight += 1
        try:
            await app(scope, limited_receive, send_with_id)
        except Exception as exc:
            log.error("unhandled error in request %s", request_id, exc_info=exc)
            if not started:
                await error_response(InternalError(), request_id, scope.get("path"))(
                    scope, receive, send_with_id
                )
        finally:
            self.inflight -= 1

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ResourceExhausted(
            f"the server is working on {self.inflight} requests (limit {self.max_inflight}); "
            "retry later"
        )
        response = error_response(error, scope["state"]["request_id"], scope.get("path"))
        if _content_length(scope) is None and _has_body(scope):
            response.headers["Connection"] = "close"  # a streamed body is not worth reading
        await response(scope, receive, send)

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"request body exceeds the limit of {limit} bytes"

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id" and _VALID_ID.match(value):
                return str(value.decode())
        return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID

    async def _reject(
        self, declared: int, limit: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        error = PayloadTooLarge(self._too_large(limit))
        response = error_response(error, scope["state"]["request_id"], scope.get("path"))
        if declared <= limit + _DRAIN_BYTES:
            # Read and drop a modest excess so the client, still sending, gets the
            # answer instead of a reset connection.
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False) and message["type"] == "http.request"
        else:
            response.headers["Connection"] = "close"  # not worth reading: hang up
        await response(scope, receive, send)


def _declares_json(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return is_json(value.decode("latin-1").split(";", 1)[0].strip().lower())
    return False


def _has_body(scope: Scope) -> bool:
    return any(key == b"transfer-encoding" for key, _ in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
