"""How `benchmarks.peers` starts each server: modelplex and the peers in their own venvs.

Every server listens on free loopback ports, logs to the work folder and is
stopped by PID (`harness.Server`). A `Candidate` is one server configuration
and the workloads measured on it; `candidates` lists them in the order they
alternate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import peer_venvs
from benchmarks.harness import Load, Server, free_port, grpc_load, wrk
from benchmarks.peer_models import REFERENCE

JSON = "application/json"


@dataclass
class Workload:
    """One measured thing: its name in the report, how to load it, at which concurrencies."""

    name: str
    load: Callable[[Server], Load]
    concurrency: tuple[int, ...] = (64,)


@dataclass
class Candidate:
    name: str
    family: str  # modelplex | fastapi | mlserver | litserve
    start: Callable[[], Server]
    workloads: list[Workload] = field(default_factory=list)


@dataclass
class Work:
    """The run's files: the work folder, joblib files, repositories and bodies."""

    folder: Path
    joblib: dict[str, Path]
    modelplex_repo: Path
    mlserver_repo: Path
    bodies: dict[str, Path]
    grpc_bodies: dict[str, Path]


def _rest(path: str, body: Path) -> Callable[[Server], Load]:
    return lambda server: wrk(server.url + path, body, JSON)


def _grpc(body: Path) -> Callable[[Server], Load]:
    return lambda server: grpc_load(server.grpc_target, body)


def modelplex(work: Work, processes: int = 1) -> Candidate:
    """`processes`: `http_processes`; 1 is the default, a second serving process
    is what the issue allows ("as many processes as serve the goal")."""
    name = "modelplex" if processes == 1 else f"modelplex-{processes}p"

    def start() -> Server:
        port, grpc_port = free_port(), free_port()
        server = Server(
            name,
            [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
             "--model-repository", str(work.modelplex_repo)],
            f"http://127.0.0.1:{port}", "/readyz",
            {"MODELPLEX_GRPC_PORT": str(grpc_port),
             "MODELPLEX_HTTP_PROCESSES": str(processes),
             "MODELPLEX_DATA_DIR": str(work.folder / f"{name}-data")},
            log=work.folder / f"{name}.log",
        )  # fmt: skip
        server.grpc_target = f"127.0.0.1:{grpc_port}"
        return server

    v1, v2 = work.bodies["v1"], work.bodies["v2"]
    concurrency = (64, 1) if processes == 1 else (64,)  # CPU at c=1: one process
    return Candidate(name, "modelplex", start, [
        Workload("LR default /v1", _rest("/v1/models/lr/predict", v1), concurrency),
        Workload("LR default V2 REST", _rest("/v2/models/lr/infer", v2)),
        Workload("LR default V2 gRPC", _grpc(work.grpc_bodies["lr"])),
        Workload("LR batch64 /v1", _rest("/v1/models/lr-batch/predict", v1)),
        Workload("RF batch /v1", _rest("/v1/models/forest-batch/predict", v1)),
    ])  # fmt: skip


def fastapi(work: Work, workers: int) -> Candidate:
    name = f"fastapi-{workers}w"

    def start() -> Server:
        port = free_port()
        return Server(
            name,
            [str(peer_venvs.ensure("fastapi")), "-m", "uvicorn", "--app-dir",
             str(REFERENCE), "fastapi_app:app", "--port", str(port), "--workers", str(workers),
             "--no-access-log", "--log-level", "warning"],
            f"http://127.0.0.1:{port}", "/healthz",
            {"BENCH_JOBLIB": str(work.joblib["lr"])},
            log=work.folder / f"{name}.log",
        )  # fmt: skip

    concurrency = (64, 1) if workers == 1 else (64,)
    return Candidate(name, "fastapi", start, [
        Workload("LR default /v1", _rest("/predict", work.bodies["v1"]), concurrency),
    ])  # fmt: skip


def mlserver(work: Work, parallel_workers: int) -> Candidate:
    name = f"mlserver-pw{parallel_workers}"

    def start() -> Server:
        port, grpc_port, metrics = free_port(), free_port(), free_port()
        python = peer_venvs.ensure("mlserver")
        server = Server(
            name,
            [str(python.parent / "mlserver"), "start", str(work.mlserver_repo)],
            f"http://127.0.0.1:{port}", "/v2/health/ready",
            {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(grpc_port),
             "MLSERVER_METRICS_PORT": str(metrics),
             "MLSERVER_PARALLEL_WORKERS": str(parallel_workers)},
            log=work.folder / f"{name}.log",
        )  # fmt: skip
        server.grpc_target = f"127.0.0.1:{grpc_port}"
        return server

    v2 = work.bodies["v2"]
    return Candidate(name, "mlserver", start, [
        Workload("LR default V2 REST", _rest("/v2/models/lr/infer", v2)),
        Workload("LR batch64 V2 REST", _rest("/v2/models/lr-batch/infer", v2)),
        Workload("RF batch V2 REST", _rest("/v2/models/forest-batch/infer", v2)),
        Workload("LR default V2 gRPC", _grpc(work.grpc_bodies["lr"])),
    ])  # fmt: skip


def litserve(work: Work, model: str, batch: int, workers: int) -> Candidate:
    label = {"lr": "LR", "forest": "RF"}[model]
    name = f"litserve-{model}-b{batch}-w{workers}"

    def start() -> Server:
        port = free_port()
        return Server(
            name,
            [str(peer_venvs.ensure("litserve")), str(REFERENCE / "litserve_app.py")],
            f"http://127.0.0.1:{port}", "/health",
            {"BENCH_JOBLIB": str(work.joblib[model]), "BENCH_PORT": str(port),
             "BENCH_BATCH": str(batch), "BENCH_WORKERS": str(workers)},
            log=work.folder / f"{name}.log",
        )  # fmt: skip

    workload = f"{label} {'batch64' if batch > 1 else 'default'} /predict"
    return Candidate(name, "litserve", start, [
        Workload(workload, _rest("/predict", work.bodies["v1"])),
    ])  # fmt: skip


def candidates(work: Work, only: str | None) -> list[Candidate]:
    found = [
        modelplex(work),
        modelplex(work, 2),
        fastapi(work, 1),
        fastapi(work, 2),
        mlserver(work, 0),
        mlserver(work, 1),
        litserve(work, "lr", 1, 1),
        litserve(work, "lr", 1, 2),
        litserve(work, "lr", 64, 1),
        litserve(work, "lr", 64, 2),
        litserve(work, "forest", 64, 1),
        litserve(work, "forest", 64, 2),
    ]
    return [c for c in found if only is None or only in (c.name, c.family)]
