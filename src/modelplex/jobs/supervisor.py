"""Embedded mode: `modelplex serve` starts its worker processes and keeps them running."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from modelplex.retry import Backoff
from modelplex.settings import Settings

log = logging.getLogger(__name__)

_NOT_FOR_WORKERS = frozenset({"config_file", "host", "port", "grpc_port", "workers"})
RESTART_BACKOFF = Backoff(base_s=1.0, cap_s=30.0)
STABLE_S = 60.0
"""A worker that ran this long before it exited starts its restart backoff afresh."""


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
                sys.executable, "-m", "modelplex", "worker", env=self._env
            )
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
