"""modelplex beside the servers a user would otherwise pick, all in one run.

    .venv/bin/python -m benchmarks.peers [--seconds 10] [--warmup 3] [--rounds 1] [--only NAME]

Installs each peer into its own venv (benchmarks.peer_venvs: MLServer with
mlserver-sklearn, LitServe, FastAPI + uvicorn), builds one set of joblib files
(benchmarks.peer_models) and serves them from each server in turn: started,
warmed, measured with wrk (or benchmarks.grpc_load for gRPC), stopped by PID,
the servers alternating once per round (the median of the rounds is kept).
Then modelplex's idle cost and its image classification against the in-process
loop (benchmarks.peer_extras). Prints the points, the ratios the targets are
stated in (with this machine's CPU model) and writes JSON to results/.
`--only` keeps one server or family (modelplex, fastapi, mlserver, litserve):
ratios without both sides are reported as missing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tritonclient.grpc import service_pb2

from benchmarks import harness, peer_extras, peer_models, peer_venvs
from benchmarks.harness import Point, measure
from benchmarks.peer_servers import Candidate, Work, candidates
from benchmarks.peer_targets import ratio_table, ratios
from benchmarks.serving import table
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def prepare(folder: Path) -> Work:
    files = peer_models.build_joblib(folder)
    request = service_pb2.ModelInferRequest(model_name="lr")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(peer_models.row().tobytes())
    grpc_body = folder / "grpc-lr.bin"
    grpc_body.write_bytes(request.SerializeToString())
    return Work(
        folder=folder,
        joblib=files,
        modelplex_repo=peer_models.build_modelplex_repository(folder, files),
        mlserver_repo=peer_models.build_mlserver_repository(folder),
        bodies=peer_models.write_bodies(folder),
        grpc_bodies={"lr": grpc_body},
    )


def run_candidate(candidate: Candidate, warmup: float, seconds: float) -> list[Point]:
    print(f"{candidate.name}: starting", flush=True)
    server = candidate.start()
    points = []
    try:
        for workload in candidate.workloads:
            load = workload.load(server)
            for c in workload.concurrency:
                point = measure(server, workload.name, load, c, warmup_s=warmup, seconds=seconds)
                print(
                    f"  {workload.name:22} c={c:<3} {point.rps:8,.0f} req/s  "
                    f"{point.server_cpu_us_per_req:6,.0f} us CPU/req  errors {point.errors}",
                    flush=True,
                )
                points.append(point)
    finally:
        server.stop()
    return points


def median_points(rounds: list[list[Point]]) -> list[Point]:
    """Per (server, workload, concurrency), the round with the median throughput."""
    grouped: dict[tuple[str, str, int], list[Point]] = {}
    for points in rounds:
        for p in points:
            grouped.setdefault((p.server, p.workload, p.concurrency), []).append(p)
    kept = []
    for group in grouped.values():
        group.sort(key=lambda p: p.rps)
        kept.append(group[(len(group) - 1) // 2])
    return kept


def peers_points(work: Work, args: argparse.Namespace) -> tuple[list[Point], dict[str, str]]:
    failures: dict[str, str] = {}
    rounds: list[list[Point]] = []
    for _ in range(args.rounds):
        this_round: list[Point] = []
        for candidate in candidates(work, args.only):
            try:
                this_round += run_candidate(candidate, args.warmup, args.seconds)
            except Exception as error:  # one peer that fails must not lose the others
                failures[candidate.name] = f"{type(error).__name__}: {error}"
                traceback.print_exc()
        rounds.append(this_round)
    return median_points(rounds), failures


def extras(work: Work, args: argparse.Namespace) -> dict[str, Any]:
    repo = ensure_example_repository(default_cache_dir())
    server = peer_extras.start_example_server(work.folder, repo)
    try:
        idle = peer_extras.idle(server, args.settle, args.idle_seconds)
        print(f"idle: {idle['cores']:.4f} cores, {idle['rss_mb']:.0f} MiB", flush=True)
        image = peer_extras.classify(server, work.folder, args.warmup, args.seconds)
    finally:
        server.stop()
    loop = peer_extras.in_process_batch32(repo, max(3.0, args.seconds))
    print(f"image: {image.rps:,.1f} images/s served, {loop['images_per_s']:,.1f} in-process")
    return {"idle": idle, "image": image, "image_loop": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", help="one server (e.g. fastapi-2w) or family (e.g. litserve)")
    parser.add_argument("--settle", type=float, default=10, help="idle: seconds after ready")
    parser.add_argument("--idle-seconds", type=float, default=20, help="idle: measured window")
    parser.add_argument(
        "--foreign-limit", type=float, default=harness.FOREIGN_LIMIT,
        help="cores of foreign load above which a point is measured again (at most twice)",
    )  # fmt: skip
    parser.add_argument("--no-extras", action="store_true", help="skip idle and image")
    args = parser.parse_args()
    harness.FOREIGN_LIMIT = args.foreign_limit
    RESULTS.mkdir(exist_ok=True)
    cpu = cpu_model()
    print(f"CPU: {cpu}", flush=True)
    with tempfile.TemporaryDirectory(prefix="modelplex-peers-") as tmp:
        work = prepare(Path(tmp))
        points, failures = peers_points(work, args)
        more = (
            None if args.no_extras or args.only not in (None, "modelplex") else extras(work, args)
        )
    found = ratios(points, more)
    print()
    print(table(points + ([more["image"]] if more else [])))
    print(f"\nCPU: {cpu}\n")
    print(ratio_table(found))
    for name, why in failures.items():
        print(f"\n{name} failed: {why}")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "peer_versions": peer_venvs.versions(),
        "args": vars(args),
        "points": [p.as_dict() for p in points],
        "extras": {**more, "image": more["image"].as_dict()} if more else None,
        "ratios": [r.as_dict() for r in found],
        "failures": failures,
    }
    out = RESULTS / f"peers-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
