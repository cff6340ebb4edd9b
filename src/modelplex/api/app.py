"""The HTTP adapter: `create_app(modelplex)`, an ASGI app over the composition root.

It starts nothing: the models load in the background once `Modelplex.start()`
runs, so `/healthz` answers at once and `/readyz` turns 200 when loading is done.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplex import __version__ as modelplex_version
from modelplex.api import routes_admin, routes_jobs, routes_v1, routes_v2
from modelplex.api.door import RestDoor
from modelplex.api.middleware import RequestContextMiddleware
from modelplex.api.openapi import build_document, with_pipeline_inputs
from modelplex.api.problems import install_handlers
from modelplex.api.schemas import Problem
from modelplex.app import Modelplex
from modelplex.core.jsonlimits import JsonLimits

UPLOAD_PREFIXES = ("/v1/jobs", "/v1/batches")
"""Routes that take files: their body limit is `max_upload_bytes`."""

DESCRIPTION = """\
modelplex serves many models, their versions and pipelines behind one stable API:
the native API under `/v1`, the Open Inference Protocol (KServe V2 / Triton) under
`/v2` and over gRPC.

Errors on `/v1` are RFC 9457 `application/problem+json` documents with a stable
`code` and the `request_id` that is also in `X-Request-ID`; on `/v2` they are the
protocol's `{"error": "..."}`. Every code, from the one error table:
"""

CORS_METHODS = ["GET", "POST", "DELETE"]
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID"]
CORS_EXPOSE = ["X-Request-ID", "Retry-After", "Location"]

BODY_SCHEMAS = (
    *routes_v1.REQUEST_SCHEMAS, *routes_jobs.REQUEST_SCHEMAS, *routes_v2.REQUEST_SCHEMAS,
    *routes_admin.REQUEST_SCHEMAS, Problem,
)  # fmt: skip


class AllowListCORS(CORSMiddleware):
    """Starlette's CORS, but an origin outside the list gets no CORS header at all
    (Starlette would still send Access-Control-Expose-Headers)."""

    async def simple_response(
        self, scope: Scope, receive: Receive, send: Send, request_headers: Headers
    ) -> None:
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().simple_response(scope, receive, send, request_headers)
        else:
            await self.app(scope, receive, send)


class ModelplexApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            self.openapi_schema = build_document(self, BODY_SCHEMAS)
        # Pipelines load after the app is built: their inputs are added on each read.
        modelplex: Modelplex = self.state.modelplex
        return with_pipeline_inputs(self.openapi_schema, modelplex.pipelines.all())


def create_app(modelplex: Modelplex) -> FastAPI:
    """The HTTP adapter over a composition root (which its owner starts and stops)."""
    settings = modelplex.settings
    app = ModelplexApp(title="modelplex", version=modelplex_version, description=DESCRIPTION)
    app.state.modelplex = modelplex
    app.state.json_limits = JsonLimits.of(settings)
    install_handlers(app)
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_admin.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_bytes,
        upload_limits=dict.fromkeys(UPLOAD_PREFIXES, settings.max_upload_bytes),
        max_json_bytes=settings.max_json_bytes,
        shortcut=_shortcut,
        max_inflight=settings.max_inflight_requests,
        authorize=RestDoor(modelplex.auth),
    )
    if settings.cors_allow_origins:  # off by default: not even a pass-through layer
        # Outermost, so a preflight is answered before the body limits and the
        # in-flight bound, and refusals carry the CORS headers a browser needs to read them.
        app.add_middleware(
            AllowListCORS,
            allow_origins=settings.cors_allow_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSE,
        )
    return app


def _shortcut(scope: Scope) -> ASGIApp | None:
    """The hottest routes, served past FastAPI's router (see the middleware)."""
    return routes_v1.predict_shortcut(scope) or routes_v2.infer_shortcut(scope)
