"""RFC 9457 problem+json responses, and the handlers that produce them.

Every error that leaves the HTTP server goes through `error_response`, which
asks `modelplex.error_map` for the status and code and writes the body the
route's protocol expects (problem+json, or `{"error": ...}` under /v2): routes
raise domain errors and never build error responses themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from modelplex import errors
from modelplex.error_map import public_message, wire_error

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://modelplex.dev/problems/"


def request_id_of(scope: Any) -> str:
    state = scope.get("state") or {}
    return str(state.get("request_id", ""))


def error_response(exc: BaseException, request_id: str, path: str | None = None) -> Response:
    """The error as the route's protocol wants it: the Open Inference Protocol's
    `{"error": ...}` under /v2, RFC 9457 problem details everywhere else."""
    if path is not None and is_v2_path(path):
        wire = wire_error(exc)
        return Response(
            orjson.dumps({"error": public_message(exc)}),
            status_code=wire.v2_status,
            media_type="application/json",
            headers=_headers(exc, request_id),
        )
    return problem_response(exc, request_id, path)


async def answer_directly(
    handler: Callable[[], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve a route's handler past FastAPI's router (the middleware's shortcut),
    its domain errors rendered as the app's own handlers would; anything else
    reaches the middleware, which logs it and answers INTERNAL."""
    try:
        response = await handler()
    except (errors.ModelplexError, HTTPException) as exc:
        domain = to_domain_error(exc)
        if isinstance(domain, errors.InternalError):
            log.error("request %s failed", request_id_of(scope), exc_info=exc)
        response = error_response(domain, request_id_of(scope), path=scope["path"])
    await response(scope, receive, send)


def is_v2_path(path: str) -> bool:
    """Whether `path` is one of the Open Inference Protocol's REST routes."""
    return path == "/v2" or path.startswith("/v2/")


def _headers(exc: BaseException, request_id: str) -> dict[str, str]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    if isinstance(exc, errors.ResourceExhausted | errors.Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: the scheme the client must use
    return headers


def problem_response(exc: BaseException, request_id: str, path: str | None = None) -> Response:
    wire = wire_error(exc)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + wire.code.lower().replace("_", "-"),
        "title": wire.title,
        "status": wire.http_status,
        "detail": public_message(exc),
        "code": wire.code,
        "request_id": request_id,
    }
    if path:
        body["instance"] = path
    return Response(
        orjson.dumps(body),
        status_code=wire.http_status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=_headers(exc, request_id),
    )


def _translate_http(exc: HTTPException) -> errors.ModelplexError:
    """Starlette's own errors (unknown route, wrong method, bad form) in our hierarchy."""
    detail = str(exc.detail) if exc.detail else None
    if exc.status_code == 404:
        return errors.RouteNotFound(detail if detail != "Not Found" else None)
    if exc.status_code == 405:
        return errors.MethodNotAllowed()
    if exc.status_code == 413:
        return errors.PayloadTooLarge(detail)
    if exc.status_code == 415:
        return errors.UnsupportedMediaType(detail)
    if exc.status_code < 500:
        return errors.InvalidInput(detail)
    return errors.InternalError()


def to_domain_error(exc: BaseException) -> errors.ModelplexError:
    """Any exception reaching the HTTP edge, as a member of our hierarchy."""
    if isinstance(exc, errors.ModelplexError):
        return exc
    if isinstance(exc, RequestValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return errors.InvalidInput(details or None)
    if isinstance(exc, HTTPException):
        return _translate_http(exc)
    return errors.InternalError()


def allowed_methods(app: FastAPI, scope: Any) -> str:
    """Every method some route serves at this path (Starlette names only the first
    route's, and /v1/jobs, say, is two routes: GET and POST)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.PARTIAL:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_handlers(app: FastAPI) -> None:
    async def on_error(request: Request, exc: Exception) -> Response:
        domain = to_domain_error(exc)
        request_id = request_id_of(request.scope)
        if isinstance(domain, errors.InternalError):
            log.error("request %s failed", request_id, exc_info=exc)
        response = error_response(domain, request_id, request.url.path)
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        if isinstance(domain, errors.MethodNotAllowed):
            response.headers["Allow"] = allowed_methods(app, request.scope)
        return response

    # Anything else is caught by RequestContextMiddleware, which renders INTERNAL
    # without Starlette's ServerErrorMiddleware re-raising it into the server.
    for exc_class in (errors.ModelplexError, RequestValidationError, HTTPException):
        app.add_exception_handler(exc_class, on_error)
