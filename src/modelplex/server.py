"""Turning settings into running processes.

`serve(settings)` runs a server in the foreground (the CLI); `start(settings)`
runs the same server on a background thread and returns once it accepts
connections (tests, benchmarks, embedding), with the bound ports (pass
`port=0`). Either way one `Modelplex` (the composition root) is started first,
then its two peer adapters: the gRPC server and the HTTP server. They stop in
the reverse order. `run_worker(settings, repository)` is `modelplex worker`.

With `http_processes` above 1 the first process also starts replicas
(`modelplex.replicas`): more serving processes on the same ports
(`SO_REUSEPORT`: the kernel spreads connections over them), each with its own
`Modelplex`; they stop, by PID, after the first one's HTTP server has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import uvloop
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from modelplex.app import Modelplex, ModelplexWorker, database_url
from modelplex.config_errors import unknown_environment
from modelplex.errors import ConfigurationError, ModelLoadError
from modelplex.examples import ensure_example_repository
from modelplex.process import configure_logging
from modelplex.redaction import install_log_redaction
from modelplex.replicas import Replicas, read_replica_arguments, replica_settings, watch_parent
from modelplex.settings import Settings

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _run_in_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a fresh uvloop event loop (what uvicorn itself would pick)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def resolve_repository(settings: Settings) -> Path:
    """The configured model repository, or the example one (built on first use)."""
    if settings.model_repository is not None:
        if not settings.model_repository.is_dir():
            raise ModelLoadError(f"model repository {settings.model_repository} is not a directory")
        return settings.model_repository
    return ensure_example_repository(settings.cache_dir)


def _in_use(host: str, port: int, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what} port {port} on {host} is already in use by another process: "
        f"stop it or choose another port"
    )


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse a port that another process holds, before this one shares it.

    The probe binds without `SO_REUSEPORT`: a socket with it (ours when replicas
    share a port, grpcio's by default) would silently share a port with a foreign
    socket that set it too, and clients would reach either server at random."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _in_use(host, port, what) from None
            raise


def _bind(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening socket; `shared`: other processes of this server bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _in_use(host, port, "HTTP") from None
        raise
    sock.setblocking(False)
    return sock


def _bind_first(settings: Settings) -> socket.socket:
    """The first serving process's HTTP socket, once both of its ports are known
    to be free (replicas bind after it, on purpose, without this check)."""
    shared = settings.effective_http_processes > 1
    if shared:
        check_port_free(settings.host, settings.port, "HTTP")
    if settings.grpc_enabled:
        check_port_free(settings.host, settings.grpc_port, "gRPC")
    return _bind(settings.host, settings.port, shared=shared)


class _Process:
    """One serving process: the composition root and its two adapters."""

    def __init__(
        self, settings: Settings, repository: Path, sock: socket.socket, *, replica: bool = False
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.replica = replica
        self.modelplex = Modelplex(settings, repository, replica=replica)
        self.sock = sock
        self.replicas: Replicas | None = None
        # Imported here: a `modelplex worker` process needs neither (~14 MiB of RSS).
        import uvicorn

        from modelplex.api.app import create_app

        self.http = uvicorn.Server(
            uvicorn.Config(
                create_app(self.modelplex),
                loop="uvloop",
                http="httptools",
                lifespan="off",  # the composition root is started here, not by the HTTP app
                access_log=settings.access_log,
                log_level=settings.log_level,
                timeout_graceful_shutdown=10,
            )
        )
        install_log_redaction("uvicorn", "uvicorn.access")  # uvicorn's config set its handlers
        self.grpc_port: int | None = None

    async def run(self) -> None:
        settings = self.settings
        await self.modelplex.start()
        grpc_server = None
        try:
            if settings.grpc_enabled:
                from modelplex.grpc.server import GrpcServer  # needs the generated protocol code

                grpc_server = GrpcServer(
                    self.modelplex.v2, settings.host, settings.grpc_port,
                    settings.max_request_bytes, settings.max_tensor_elements,
                    shared=self.replica or settings.effective_http_processes > 1,
                    authenticator=self.modelplex.auth,
                )  # fmt: skip
                await grpc_server.start()
                self.grpc_port = grpc_server.port
            count = settings.effective_http_processes
            if count > 1 and not self.replica:
                self.replicas = Replicas(
                    replica_settings(settings, self.sock.getsockname()[1], self.grpc_port),
                    self.repository,
                    count - 1,
                )
                await self.replicas.start()
            await self.http.serve(sockets=[self.sock])
        finally:
            if self.replicas is not None:
                await self.replicas.stop()
            if grpc_server is not None:
                await grpc_server.stop()
            await self.modelplex.stop()

    def request_stop(self) -> None:
        self.http.should_exit = True


def masked_url(url: str) -> str:
    """A database URL fit for a log line: its password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL sqlalchemy reads: hide whatever sits before '@'
        return re.sub(r"://[^/@]*@", "://***@", url)


def warn_unknown_environment() -> None:
    """At start-up: one warning per `MODELPLEX_*` variable that no setting reads."""
    for line in unknown_environment().values():
        log.warning("%s", line)


def serve(settings: Settings) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    warn_unknown_environment()
    repository = resolve_repository(settings)
    sock = _bind_first(settings)
    host, port = sock.getsockname()[:2]
    log.info("modelplex serving %s on http://%s:%d", repository, host, port)
    process = _Process(settings, repository, sock)

    async def main() -> None:
        # Our own handlers, so that the signal uvicorn re-raises once it has shut
        # down lands here instead of killing the process before the rest stops.
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, process.request_stop)
        await process.run()

    try:
        _run_in_loop(main())
    finally:
        sock.close()


def run_replica() -> None:
    """A replica process (started by `Replicas`): serve on the shared ports until
    SIGTERM or until the first process is gone."""
    settings, repository, parent_pid = read_replica_arguments()
    configure_logging(settings.log_level)
    sock = _bind(settings.host, settings.port, shared=True)
    process = _Process(settings, repository, sock, replica=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, process.request_stop)
        watcher = asyncio.create_task(watch_parent(parent_pid, process.request_stop))
        try:
            await process.run()
        finally:
            watcher.cancel()

    try:
        _run_in_loop(main())
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A server on a background thread; a context manager that stops it."""

    url: str
    port: int
    grpc_port: int | None
    modelplex: Modelplex
    _process: _Process
    _thread: threading.Thread

    @property
    def replica_pids(self) -> list[int]:
        """PIDs of the other serving processes (`http_processes` above 1)."""
        replicas = self._process.replicas
        return replicas.pids() if replicas is not None else []

    def stop(self) -> None:
        self._process.request_stop()
        self._thread.join(timeout=60)

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
    sock = _bind_first(settings)
    port = sock.getsockname()[1]
    try:
        process = _Process(settings, repository, sock)
    except BaseException:
        sock.close()
        raise
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _run_in_loop(process.run())
        except BaseException as exc:  # reported by start() below, or by the log
            failure.append(exc)
            log.error("modelplex server stopped with an error", exc_info=exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"modelplex-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not process.http.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            process.request_stop()
            thread.join(timeout=10)
            raise RuntimeError("modelplex server did not start") from (
                failure[0] if failure else None
            )
        time.sleep(0.01)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    return RunningServer(
        f"http://{host}:{port}", port, process.grpc_port, process.modelplex, process, thread
    )


def run_worker(settings: Settings, repository: Path) -> None:
    """`modelplex worker`: run jobs in the foreground until SIGINT/SIGTERM, then drain."""
    warn_unknown_environment()
    # Which database and repository: a worker pointed at the wrong ones runs nothing.
    log.info(
        "modelplex worker: jobs from %s, models from %s",
        masked_url(database_url(settings)), repository.resolve(),
    )  # fmt: skip
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # batch and job work yields to synchronous traffic

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await ModelplexWorker(settings, repository).run(stop)

    asyncio.run(main())
