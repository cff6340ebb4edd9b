"""The HTTP adapter: `create_app(modelplex)`, an ASGI app over the composition root.

It starts nothing: the models load in the background once `Modelplex.start()`
runs, so `/healthz` answers at once and `/readyz` turns 200 when loading is done.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from modelplex import __version__ as modelplex_version
from modelplex.api import routes_jobs, routes_v1, routes_v2
from modelplex.api.middleware import RequestContextMiddleware
from modelplex.api.problems import install_handlers
from modelplex.api.schemas import Problem
from modelplex.app import Modelplex

UPLOAD_PREFIXES = ("/v1/jobs", "/v1/batches")
"""Routes that take files: their body limit is `max_upload_bytes`."""

DESCRIPTION = """\
modelplex serves many models, their versions and pipelines behind one stable API.

Errors are RFC 9457 `application/problem+json` documents with a stable `code`
(INVALID_INPUT, MODEL_NOT_FOUND, VERSION_NOT_FOUND, MODEL_NOT_READY,
INFERENCE_TIMEOUT, RESOURCE_EXHAUSTED, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE,
INTERNAL) and the `request_id` that is also in `X-Request-ID`.
"""


class ModelplexApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document plus the schemas of bodies the hot routes parse themselves."""
        if self.openapi_schema:
            return self.openapi_schema
        document = get_openapi(
            title=self.title, version=self.version, description=self.description, routes=self.routes
        )
        _, extra = models_json_schema(
            [
                (model, "validation")
                for model in (*routes_v1.REQUEST_SCHEMAS, *routes_jobs.REQUEST_SCHEMAS, Problem)
            ],
            ref_template="#/components/schemas/{model}",
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in extra.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        self.openapi_schema = document
        return document


def create_app(modelplex: Modelplex) -> FastAPI:
    """The HTTP adapter over a composition root (which its owner starts and stops)."""
    settings = modelplex.settings
    app = ModelplexApp(title="modelplex", version=modelplex_version, description=DESCRIPTION)
    app.state.modelplex = modelplex
    install_handlers(app)
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_jobs.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_bytes,
        upload_limits=dict.fromkeys(UPLOAD_PREFIXES, settings.max_upload_bytes),
    )
    return app
