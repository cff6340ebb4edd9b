"""Turning settings into a running HTTP server.

`serve(settings)` runs in the foreground (the CLI); `start(settings)` runs the
same server on a background thread and returns once it accepts connections
(tests, benchmarks, embedding), with the bound port (pass `port=0`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from modelplex.api.app import create_app
from modelplex.errors import ModelLoadError
from modelplex.examples import ensure_example_repository
from modelplex.settings import Settings

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0


def resolve_repository(settings: Settings) -> Path:
    """The configured model repository, or the example one (built on first use)."""
    if settings.model_repository is not None:
        if not settings.model_repository.is_dir():
            raise ModelLoadError(f"model repository {settings.model_repository} is not a directory")
        return settings.model_repository
    return ensure_example_repository(settings.cache_dir)


def _uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(settings: Settings) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    repository = resolve_repository(settings)
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    log.info("modelplex serving %s on http://%s:%d", repository, host, port)
    server = uvicorn.Server(_uvicorn_config(settings, create_app(settings, repository)))
    server.run(sockets=[sock])


@dataclass
class RunningServer:
    """A server on a background thread; a context manager that stops it."""

    url: str
    port: int
    grpc_port: int | None
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(settings: Settings, repository: Path | None = None) -> RunningServer:
    """Start a server on a background thread and wait until it accepts connections."""
    repository = repository or resolve_repository(settings)
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    try:
        app = create_app(settings, repository)
        server = uvicorn.Server(_uvicorn_config(settings, app))
    except BaseException:
        sock.close()
        raise

    def run() -> None:
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name=f"modelplex-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
            raise RuntimeError("modelplex server did not start")
        time.sleep(0.01)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    grpc_port = getattr(app.state, "grpc_port", None)
    return RunningServer(f"http://{host}:{port}", port, grpc_port, server, thread)
