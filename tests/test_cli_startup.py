"""What `modelplex serve` and `modelplex worker` say as they start: real processes.

Taken ports, invalid settings and model.toml files, unknown variables, and what
a worker logs about its database and repository.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from tests.helpers import write_python_model
from tests.test_cli import CLI, free_port

START_TIMEOUT_S = 90.0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repository = tmp_path / "repo"
    write_python_model(repository, "doubler")
    return repository


def cli_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a CLI process: this one's without any MODELPLEX_ setting,
    state in `tmp_path`, no workers, then `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLEX_")}
    env.update(MODELPLEX_DATA_DIR=str(tmp_path / "data"), MODELPLEX_WORKERS="0", **variables)
    return env


class Running:
    """A CLI process whose stderr lines are read on a thread (nothing blocks on it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, *fragments: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first stderr line holding every fragment (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None or not self.lines.empty(), self.seen
                continue
            self.seen.append(line)
            if all(f in line for f in fragments):
                return line
        raise AssertionError(f"no line with {fragments} in {self.seen}")


@contextmanager
def cli_process(args: list[str], env: dict[str, str]) -> Iterator[Running]:
    """Start `modelplex ARGS`; stop it by PID (SIGTERM, then SIGKILL) on the way out."""
    process = subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    running = Running(process)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        running.reader.join(timeout=10)  # EOF once the process (and its replicas) exit
        assert process.stderr is not None
        process.stderr.close()


def _serve(repo: Path, port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "serve", "--port", str(port), "--model-repository", str(repo)],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env, check=False,
    )  # fmt: skip


def _listener(*, reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    if reuse_port:  # as a server that means to share its port with its own processes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# -- taken ports ------------------------------------------------------------------
@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_refuses_a_taken_http_port(tmp_path: Path, repo: Path, processes: str) -> None:
    """Even a foreign socket with SO_REUSEPORT, beside a server whose own replicas
    share their port with SO_REUSEPORT."""
    with _listener(reuse_port=True) as taken:
        port = taken.getsockname()[1]
        env = cli_env(tmp_path, MODELPLEX_GRPC_ENABLED="false", MODELPLEX_HTTP_PROCESSES=processes)
        result = _serve(repo, port, env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if str(port) in line]
    assert lines == [f"HTTP port {port} on 127.0.0.1 is already in use by another process: "
                     "stop it or choose another port"], result.stderr  # fmt: skip
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_refuses_a_grpc_port_another_grpc_server_holds(
    tmp_path: Path, repo: Path, processes: str
) -> None:
    """grpcio sets SO_REUSEPORT by default: both servers would bind and share clients."""
    other = grpc.server(ThreadPoolExecutor(max_workers=1))
    grpc_port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        env = cli_env(
            tmp_path, MODELPLEX_GRPC_PORT=str(grpc_port), MODELPLEX_HTTP_PROCESSES=processes
        )
        result = _serve(repo, free_port(), env)
    finally:
        other.stop(None)
    assert result.returncode != 0
    assert f"gRPC port {grpc_port} on 127.0.0.1 is already in use" in result.stderr
    assert "gRPC listening" not in result.stderr
    assert "Traceback" not in result.stderr


def test_replicas_share_their_own_ports_and_another_modelplex_is_refused(
    tmp_path: Path, repo: Path
) -> None:
    """The first process and its replica both listen on the HTTP and gRPC ports
    (SO_REUSEPORT); a second modelplex on either port is refused all the same."""
    http_port, grpc_port = free_port(), free_port()
    env = cli_env(tmp_path, MODELPLEX_GRPC_PORT=str(grpc_port), MODELPLEX_HTTP_PROCESSES="2")
    args = ["serve", "--port", str(http_port), "--model-repository", str(repo)]
    with cli_process(args, env) as server:
        server.wait_for(f"gRPC listening on port {grpc_port}")
        server.wait_for(f"gRPC listening on port {grpc_port}")  # the replica's
        second = _serve(
            repo, free_port(), cli_env(tmp_path / "2", MODELPLEX_GRPC_PORT=str(grpc_port))
        )
        assert second.returncode != 0
        assert f"gRPC port {grpc_port} on 127.0.0.1 is already in use" in second.stderr
        third = _serve(repo, http_port, cli_env(tmp_path / "3", MODELPLEX_GRPC_ENABLED="false"))
        assert third.returncode != 0
        assert f"HTTP port {http_port} on 127.0.0.1 is already in use" in third.stderr
        assert server.process.poll() is None
    assert not any("in use" in line or "exited with" in line for line in server.seen)


# -- configuration errors -----------------------------------------------------------
def _clean(stderr: str) -> None:
    """An expected configuration error: no traceback, no pydantic rendering."""
    assert "Traceback" not in stderr
    assert "errors.pydantic.dev" not in stderr
    assert "validation error" not in stderr


def test_a_bad_environment_value_names_the_variable(tmp_path: Path, repo: Path) -> None:
    env = cli_env(tmp_path, MODELPLEX_MAX_REQUEST_BYTES="lots", MODELPLEX_LOG_LEVEL="loud")
    result = _serve(repo, free_port(), env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "environment variable MODELPLEX_MAX_REQUEST_BYTES: expected a valid integer, "
        "unable to parse string as an integer, got 'lots'",
        "environment variable MODELPLEX_LOG_LEVEL: expected 'debug', 'info', 'warning' or "
        "'error', got 'loud'",
    ]
    _clean(result.stderr)


def test_a_typo_in_the_settings_file_names_the_file_and_key(tmp_path: Path, repo: Path) -> None:
    config = tmp_path / "modelplex.toml"
    config.write_text("prot = 9000\ndefault_timeout_ms = 0\n")
    env = cli_env(tmp_path)
    result = subprocess.run(
        [*CLI, "serve", "--config", str(config), "--model-repository", str(repo)],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}: default_timeout_ms: expected greater than 0, got 0",
        f"{config}: prot: unknown key (did you mean 'port'?)",
    ]
    _clean(result.stderr)


def test_a_typo_in_model_toml_and_an_unknown_variable(tmp_path: Path, repo: Path) -> None:
    """The model's FAILED reason and the log say where the typo is and what was meant,
    without a traceback; an unknown MODELPLEX_ variable is warned about at start-up."""
    typo = write_python_model(repo, "typo")
    toml = typo / "model.toml"
    toml.write_text(toml.read_text().replace("[python]\n", '[python]\nclas_name = "Model"\n'))
    port = free_port()
    env = cli_env(tmp_path, MODELPLEX_GRPC_ENABLED="false", MODELPLEX_PROT="9000")
    args = ["serve", "--port", str(port), "--model-repository", str(repo)]
    expected = "model.toml: python.clas_name: unknown key (did you mean 'class_name'?)"
    with cli_process(args, env) as server:
        warning = server.wait_for("MODELPLEX_PROT")
        assert warning.endswith(
            "WARNING modelplex.server: unknown environment variable MODELPLEX_PROT is ignored "
            "(did you mean 'MODELPLEX_PORT'?)"
        )
        assert server.wait_for("model typo failed to load").endswith(
            f"model typo failed to load: {expected}"
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _until_serving(http, server)
            models = http.get("/v1/models").json()["models"]
        assert {m["name"]: m["reason"] for m in models}["typo"] == expected
    assert not any("Traceback" in line for line in server.seen)


def _until_serving(http: httpx.Client, server: Running) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.seen
        try:
            if http.get("/readyz").json()["status"] != "loading":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server never finished loading")


# -- the worker says what it works on ------------------------------------------------
def test_the_worker_logs_its_database_and_repository(
    tmp_path: Path, repo: Path, postgres_url: str
) -> None:
    with_password = postgres_url.replace("://postgres@", "://postgres:s3cret-pw@", 1)
    assert with_password != postgres_url
    env = cli_env(tmp_path, MODELPLEX_DATABASE_URL=with_password)
    with cli_process(["worker", "--model-repository", str(repo)], env) as worker:
        line = worker.wait_for("modelplex worker:")
        masked = with_password.replace("s3cret-pw", "***")
        assert line.endswith(f"modelplex worker: jobs from {masked}, models from {repo}")
        worker.wait_for("alembic", timeout_s=START_TIMEOUT_S)  # it got as far as the database
    assert not any("s3cret" in seen for seen in worker.seen)
