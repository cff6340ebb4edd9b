"""The ASGI application: `create_app(settings, repository)`.

Models load in a background thread after start-up, so `/healthz` answers at
once and `/readyz` turns 200 when loading is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

import modelplex
from modelplex.api import routes_jobs, routes_v1, routes_v2
from modelplex.api.middleware import RequestContextMiddleware
from modelplex.api.problems import install_handlers
from modelplex.api.schemas import Problem
from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry
from modelplex.jobs.system import JobSystem
from modelplex.oip.service import V2Service
from modelplex.process import tune_gc
from modelplex.settings import Settings

log = logging.getLogger(__name__)

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


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading the model repository failed", exc_info=task.exception())


def create_app(settings: Settings, repository: Path) -> FastAPI:
    registry = ModelRegistry(repository, settings)
    dataplane = DataPlane(registry, settings)
    jobs = JobSystem(settings, repository, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load_models() -> None:
            await asyncio.to_thread(registry.load_all)
            tune_gc(settings.gc_gen0_threshold)

        # The job database must be reachable: fail start-up now rather than every job later.
        await jobs.start()
        grpc_server = None
        if settings.grpc_enabled:
            from modelplex.grpc.server import GrpcServer  # needs the generated protocol code

            grpc_server = GrpcServer(
                app.state.v2, settings.host, settings.grpc_port, settings.max_request_bytes
            )
            await grpc_server.start()
        app.state.grpc_port = grpc_server.port if grpc_server else None
        app.state.jobs, app.state.batches = jobs.jobs, jobs.batches
        loading = asyncio.create_task(load_models(), name="load-models")
        loading.add_done_callback(_log_failure)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            await jobs.stop()
            if not loading.done():
                # A model load cannot be interrupted; let it finish before closing.
                await asyncio.shield(loading)
            await registry.close()
            dataplane.close()

    app = ModelplexApp(
        title="modelplex",
        version=modelplex.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    app.state.v2 = V2Service(dataplane)
    app.state.settings = settings
    app.state.job_system = jobs
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
