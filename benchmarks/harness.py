"""Shared pieces of the benchmarks: servers as subprocesses, wrk, CPU and RSS accounting.

Method (see docs/benchmarks.md): every point runs wrk against one server for a
warm-up and then a measured interval, while we read
* the server's CPU time (all processes in its tree) and peak RSS,
* the machine's total CPU time from /proc/stat, minus ours (server, wrk, this
  script): the foreign load. A point with more than `FOREIGN_LIMIT` cores of
  foreign load is measured again (at most twice) and the load is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FOREIGN_LIMIT = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread may have exited meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(_children(current))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / HZ


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / HZ


class Server:
    """A server process, started and stopped by PID, with peak-RSS sampling."""

    def __init__(
        self,
        name: str,
        command: list[str],
        url: str,
        ready_path: str,
        env: dict[str, str],
        cwd: Path | None = None,
        log: Path | None = None,
    ):
        self.name = name
        self.url = url
        self.grpc_target = ""  # "host:port" where the server also speaks gRPC
        self.log = log
        output = log.open("wb") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=output, stderr=output, cwd=cwd
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}{self._tail()}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not become ready")
            time.sleep(0.2)
        self.peak_rss = 0
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _tail(self) -> str:
        if not self.log or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()[-15:]
        return "; its log ends:\n" + "\n".join(lines)

    def _sample(self) -> None:
        while not self._sampling.wait(0.25):
            self.peak_rss = max(self.peak_rss, rss_bytes(tree(self.process.pid)))

    def pids(self) -> list[int]:
        return tree(self.process.pid)

    def stop(self) -> None:
        if hasattr(self, "_sampling"):
            self._sampling.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class Point:
    server: str
    workload: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us_per_req: float
    server_cores: float
    peak_rss_mb: float
    foreign_cores: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Load = Callable[[int, float], dict[str, Any]]
"""(concurrency, seconds) -> {requests, duration_us, p50_us, p99_us, socket_errors, non2xx}."""


def wrk(url: str, body: Path, content_type: str, header: str = "") -> Load:
    """POSTs of `body` by wrk (HTTP/1.1) with a Lua script that counts non-2xx answers."""

    def run(concurrency: int, seconds: float) -> dict[str, Any]:
        threads = 1 if concurrency == 1 else 2
        result = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
             "--timeout", "10s", "-s", str(HERE / "post.lua"), url],
            env={**os.environ, "WRK_BODY": str(body), "WRK_CTYPE": content_type,
                 "WRK_HEADER": header},
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        )  # fmt: skip
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    return run


def grpc_load(target: str, body: Path) -> Load:
    """Calls of the serialized ModelInferRequest in `body` by `benchmarks.grpc_load`
    (grpc.aio, in a process of its own) against `target` ("host:port")."""

    def run(concurrency: int, seconds: float) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.grpc_load", target, str(body),
             "-c", str(concurrency), "-d", str(max(1.0, seconds))],
            capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=HERE.parent,
        )  # fmt: skip
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    return run


def h2load(url: str, body: Path, headers: list[str]) -> Load:
    """POSTs of `body` by h2load (HTTP/2, one stream per connection): a C load
    generator for gRPC, whose messages are HTTP/2 POSTs of framed protobuf.
    Latency percentiles come from its per-request log."""

    def run(concurrency: int, seconds: float) -> dict[str, Any]:
        with tempfile.NamedTemporaryFile(suffix=".log") as log_file:
            result = subprocess.run(
                ["h2load", "-c", str(concurrency), "-m", "1", "-D", str(max(1, round(seconds))),
                 "-d", str(body), "--log-file", log_file.name,
                 *[arg for h in headers for arg in ("-H", h)], url],
                capture_output=True, text=True, timeout=seconds + 60, check=True,
            )  # fmt: skip
            rows = [line.split() for line in Path(log_file.name).read_text().splitlines()]
        durations = sorted(int(r[2]) for r in rows if len(r) >= 3)
        failed = sum(1 for r in rows if len(r) >= 3 and r[1] != "200")
        match = re.search(r"finished in ([\d.]+)(m?s)", result.stdout)
        elapsed = (
            float(match.group(1)) / (1000 if match.group(2) == "ms" else 1) if match else seconds
        )
        return {
            "requests": len(durations),
            "duration_us": elapsed * 1e6,
            "p50_us": durations[len(durations) // 2] if durations else 0,
            "p99_us": durations[int(len(durations) * 0.99)] if durations else 0,
            "socket_errors": 0,
            "non2xx": failed,
        }

    return run


def measure(
    server: Server,
    workload: str,
    load: Load,
    concurrency: int,
    *,
    warmup_s: float = 3,
    seconds: float = 10,
) -> Point:
    for _attempt in range(3):
        load(concurrency, warmup_s)
        _children_cpu()  # forget the warm-up's load generator
        pids = server.pids()
        server_before, self_before = cpu_seconds(pids), _self_cpu()
        busy_before, wall_before = machine_busy_seconds(), time.monotonic()
        result = load(concurrency, seconds)
        wall = time.monotonic() - wall_before
        busy = machine_busy_seconds() - busy_before
        server_cpu = cpu_seconds(pids) - server_before
        ours = server_cpu + (_self_cpu() - self_before) + _children_cpu()
        foreign = max(0.0, busy - ours) / wall
        requests = result["requests"]
        point = Point(
            server=server.name,
            workload=workload,
            concurrency=concurrency,
            rps=requests / (result["duration_us"] / 1e6),
            p50_ms=result["p50_us"] / 1000,
            p99_ms=result["p99_us"] / 1000,
            errors=result["socket_errors"] + result["non2xx"],
            server_cpu_us_per_req=server_cpu / max(requests, 1) * 1e6,
            server_cores=server_cpu / wall,
            peak_rss_mb=server.peak_rss / 2**20,
            foreign_cores=foreign,
        )
        if foreign <= FOREIGN_LIMIT:
            return point
        print(f"  foreign load {foreign:.2f} cores during {server.name} c={concurrency}; again")
        time.sleep(5)
    return point


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


_last_children_cpu = 0.0


def _children_cpu() -> float:
    """CPU of waited-for children (wrk) since the previous call."""
    global _last_children_cpu
    times = os.times()
    total = times.children_user + times.children_system
    delta, _last_children_cpu = total - _last_children_cpu, total
    return delta
