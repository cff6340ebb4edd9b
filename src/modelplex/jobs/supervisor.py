"""Embedded mode: `modelplex serve` starts its worker processes and keeps them running.

It also wakes them when it queues a job on a store that cannot wake other
processes itself (SQLite): a byte on each worker's stdin, a pipe the worker
reads (`wake_on_stdin`). A pipe rather than a signal: a byte written before
the worker listens waits in the pipe, where a signal would kill the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelplex.config_errors import unknown_environment
from modelplex.retry import Backoff
from modelplex.settings import Settings

log = logging.getLogger(__name__)

_NOT_FOR_WORKERS = frozenset({"config_file", "host", "port", "grpc_port", "workers"})
RESTART_BACKOFF = Backoff(base_s=1.0, cap_s=30.0)
STABLE_S = 60.0
"""A worker that ran this long before it exited starts its restart backoff afresh."""
_WAKE = b"w"
_WAKE_BACKLOG = 64
"""Bytes left unread in a worker's pipe past which more wake-ups would say nothing new."""


def worker_environment(settings: Settings, repository: Path, database_url: str) -> dict[str, str]:
    """The settings a worker needs, as environment variables, so it sees exactly
    what the server was started with (CLI options and TOML files included)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if name in _NOT_FOR_WORKERS or value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"MODELPLEX_{name.upper()}"] = text
    env.pop("MODELPLEX_CONFIG_FILE", None)
    for name in unknown_environment(env):  # `modelplex serve` warned of them once
        env.pop(name)
    env["MODELPLEX_MODEL_REPOSITORY"] = str(repository.resolve())
    env["MODELPLEX_DATA_DIR"] = str(settings.data_dir.resolve())
    env["MODELPLEX_DATABASE_URL"] = database_url
    return env


class WorkerSupervisor:
    def __init__(self, count: int, env: dict[str, str], drain_s: float) -> None:
        self._count = count
        self._env = env
        self._drain_s = drain_s
        self._stopping = False
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.returncode is None]

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep_alive(i), name=f"worker-supervisor-{i}")
            for i in range(self._count)
        ]

    async def _keep_alive(self, index: int) -> None:
        failures = 0
        while not self._stopping:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelplex", "worker", env=self._env,
                stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self._processes[index] = process
            started = time.monotonic()
            log.info("worker process %d started (pid %d)", index, process.pid)
            code = await process.wait()
            if self._stopping:
                return
            failures = 1 if time.monotonic() - started > STABLE_S else failures + 1
            delay = RESTART_BACKOFF.delay(failures)
            log.error(
                "worker process %d (pid %d) exited with %s; restarting in %.0fs",
                index, process.pid, code, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def wake(self) -> None:
        """Tell every running worker to look for jobs now."""
        for process in self._processes.values():
            pipe = process.stdin
            if process.returncode is not None or pipe is None or pipe.is_closing():
                continue
            if pipe.transport.get_write_buffer_size() < _WAKE_BACKLOG:
                with contextlib.suppress(OSError, RuntimeError):  # it just died
                    pipe.write(_WAKE)

    async def stop(self) -> None:
        """SIGTERM every worker (they drain), wait, then SIGKILL what is left."""
        self._stopping = True
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            try:
                # The worker drains for drain_s, then takes up to 10 s to hand
                # back what it could not finish: give it that, and a margin.
                await asyncio.wait_for(process.wait(), self._drain_s + 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wake_on_stdin(wake: Callable[[], None]) -> None:
    """In a worker process: call `wake` for each wake-up its supervisor writes to
    stdin. Returns at once if stdin is not a pipe (a worker started by hand), and
    when the pipe closes."""
    try:
        mode = os.fstat(0).st_mode
        # asyncio gives a child's stdin as a socket pair; a shell, as a pipe.
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return
    except OSError:
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        source = os.fdopen(os.dup(0), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), source
        )
    except (OSError, ValueError) as exc:  # the worker still polls: slower, not broken
        log.warning("cannot read wake-ups from stdin: %s", exc)
        return
    try:
        while await reader.read(4096):
            wake()
    finally:
        transport.close()
