"""Running servers, worker processes and a webhook receiver for job tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelplex.client import WebhookVerificationError, verify_webhook
from modelplex.jobs.supervisor import worker_environment
from modelplex.settings import Settings

WAIT_S = 60.0
TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S, every: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; return it, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(every)


def wait_job(
    client: httpx.Client,
    job_id: str,
    statuses: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED"),
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    result: dict[str, Any] = wait_for(done)
    return result


class WorkerProcess:
    """`modelplex worker` as a real process (so it can be killed with SIGKILL)."""

    def __init__(self, settings: Settings, repository: Path, database_url: str) -> None:
        env = worker_environment(settings, repository, database_url)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelplex", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            if self.process.stderr:
                self.process.stderr.close()


class ServerProcess:
    """`modelplex serve` as a real process (no worker processes of its own, no gRPC)
    on the job database of `settings`, its log in `log`; ready once loaded."""

    def __init__(self, settings: Settings, repository: Path, log: Path) -> None:
        env = worker_environment(settings, repository, settings.database_url or "")
        env.update(MODELPLEX_WORKERS="0", MODELPLEX_GRPC_ENABLED="false")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelplex", "serve", "--port", str(port)],
                env=env, stdout=subprocess.DEVNULL, stderr=output,
            )  # fmt: skip
        try:
            wait_for(self._loaded, timeout=WAIT_S, every=0.1)
        except BaseException:
            self.terminate()
            raise

    def _loaded(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return bool(httpx.get(self.url + "/readyz", timeout=1).json()["status"] != "loading")
        except httpx.TransportError:
            return False

    def terminate(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next planned status."""

    plan: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers.items())
        status = self.plan.pop(0) if self.plan else 200
        try:
            valid = bool(verify_webhook(body, headers, TEST_SECRET))
        except WebhookVerificationError:
            valid = False
        self.received.append({"body": body, "headers": headers, "valid": valid, "status": status})
        return Response(status_code=status)


@contextmanager
def serve_asgi(app: Any, **config: Any) -> Iterator[str]:
    """`app` on a free loopback port (`config`: more uvicorn options, e.g. TLS)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def receiver(plan: list[int] | None = None) -> Iterator[Receiver]:
    hooks = Receiver(plan=list(plan or []))
    app = Starlette(routes=[Route("/hook", hooks.handle, methods=["POST"])])
    with serve_asgi(app) as url:
        hooks.url = f"{url}/hook"
        yield hooks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
