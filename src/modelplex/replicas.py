"""More serving processes on the first one's ports (`http_processes`).

One Python process serves a cheap model at about one core; the others would sit
idle. A replica is a full serving process (its own `Modelplex`, models, HTTP
and gRPC servers) bound to the same ports with `SO_REUSEPORT`, so the kernel
spreads new connections over the processes. The first process keeps the job
side for itself (migrations, the webhook dispatcher, retention, embedded
workers): jobs live in the shared store, so a replica's `POST /v1/jobs` is
served like any other.

Replicas are new interpreters (not forks: the first process already runs
threads and an event loop) that get their settings on standard input; they are
restarted when one dies, stopped with SIGTERM by PID (then
SIGKILL after a grace period), and stop on their own if the first process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from modelplex.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
"""How long a replica may drain after SIGTERM before it is killed."""
RESTART_DELAY_S = 1.0
_ENTRY = "from modelplex.server import run_replica; run_replica()"


def replica_settings(settings: Settings, port: int, grpc_port: int | None) -> Settings:
    """A replica's settings: the ports the first process bound, no job side."""
    return settings.model_copy(
        update={
            "port": port,
            "grpc_port": grpc_port if grpc_port is not None else settings.grpc_port,
            "grpc_enabled": settings.grpc_enabled and grpc_port is not None,
            "workers": 0,
            "http_processes": 1,
        }
    )


def read_replica_arguments() -> tuple[Settings, Path, int]:
    """In a replica: what `Replicas` sent on its standard input."""
    lines = sys.stdin.read().splitlines()
    settings = Settings.model_validate_json(lines[0])
    return settings, Path(lines[1]), int(lines[2])


class Replicas:
    """`count` replica processes, kept alive until `stop()`."""

    def __init__(self, settings: Settings, repository: Path, count: int) -> None:
        self._payload = "\n".join(
            (settings.model_dump_json(), str(repository.resolve()), str(os.getpid()))
        ).encode()
        self._processes: list[asyncio.subprocess.Process | None] = [None] * count
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.returncode is None]

    async def start(self) -> None:
        for index in range(len(self._processes)):
            await self._spawn(index)
            self._tasks.append(
                asyncio.create_task(self._keep_alive(index), name=f"replica-{index + 1}")
            )

    async def _spawn(self, index: int) -> None:
        # The parent's import path, as multiprocessing would pass it (without
        # re-running the parent's main module, which may not be guarded).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _ENTRY, stdin=asyncio.subprocess.PIPE, env=env
        )
        assert process.stdin is not None
        process.stdin.write(self._payload)
        process.stdin.close()
        self._processes[index] = process
        log.info("replica %d started (pid %d)", index + 1, process.pid)

    async def _keep_alive(self, index: int) -> None:
        while not self._stopping:
            process = self._processes[index]
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            log.error("replica %d (pid %d) exited with %s", index + 1, process.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._stopping:
                await self._spawn(index)

    async def stop(self) -> None:
        """SIGTERM each replica by PID, wait for it to drain, SIGKILL what is left."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [p for p in self._processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.error("replica pid %d did not stop in time; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def watch_parent(parent_pid: int, stop: Callable[[], None]) -> None:
    """In a replica: stop when the first process has gone (a pidfd turns readable
    when it exits; no polling)."""
    try:
        fd = os.pidfd_open(parent_pid)
    except OSError:  # already gone, or a kernel without pidfds
        if os.getppid() != parent_pid:
            stop()
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    log.error("the first serving process (pid %d) is gone; stopping", parent_pid)
    stop()
