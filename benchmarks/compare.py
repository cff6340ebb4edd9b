"""Before/after: the serving and jobs benchmarks on two source trees, in one sitting.

    git archive <base> | tar -x -C /tmp/base   # then build its gRPC code:
    PYTHONPATH=/tmp/base/src .venv/bin/python -m modelplex.grpc.codegen
    .venv/bin/python -m benchmarks.compare --base-src /tmp/base/src [--runs 3]

Each run measures the base tree and then this checkout, alternating, with the
same load generator, bodies, model files and database, so both see the same
machine; the table reports the median of the runs for each point and the
ratio after/before. The servers and workers of the base tree run with
`PYTHONPATH=<base-src>` (the same virtual environment).

Serving: modelplex `POST /v1/models/digits/predict` (one instance, JSON) at
c=1, 16 and 64, and `POST /v1/classify` (a 224x224 JPEG) at c=32, via wrk.
Jobs: one server and 1 or 2 workers on PostgreSQL and on SQLite: submit
throughput and p99 at 50 submitters, drain and end-to-end jobs/s (see
`benchmarks.jobs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import jobs
from benchmarks.harness import Server, free_port, measure, wrk
from benchmarks.serving import RESULTS, write_bodies
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

DIGITS_CONCURRENCY = (1, 16, 64)
IMAGE_CONCURRENCY = 32


def serving_run(repo: Path, tree: str, env: dict[str, str], seconds: float) -> dict[str, float]:
    digits_body, image_body, image_type = write_bodies(RESULTS)
    port = free_port()
    server = Server(
        f"modelplex ({tree})",
        [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
         "--model-repository", str(repo)],
        f"http://127.0.0.1:{port}",
        "/readyz",
        # Default settings otherwise (gRPC on, one embedded worker), as `modelplex serve`.
        {"MODELPLEX_DATA_DIR": str(RESULTS / f"data-{tree}"),
         "MODELPLEX_GRPC_PORT": str(free_port()), **env},
    )  # fmt: skip
    results: dict[str, float] = {}
    try:
        for c in DIGITS_CONCURRENCY:
            load = wrk(server.url + "/v1/models/digits/predict", digits_body, "application/json")
            point = measure(server, "digits JSON", load, c, warmup_s=3, seconds=seconds)
            results[f"digits c={c} req/s"] = point.rps
            results[f"digits c={c} p99 ms"] = point.p99_ms
            results[f"digits c={c} CPU us/req"] = point.server_cpu_us_per_req
            print(f"    {tree:7} digits c={c:<3} {point.rps:8,.0f} req/s", flush=True)
        load = wrk(server.url + "/v1/classify", image_body, image_type)
        point = measure(server, "classify", load, IMAGE_CONCURRENCY, warmup_s=3, seconds=seconds)
        results[f"classify c={IMAGE_CONCURRENCY} req/s"] = point.rps
        results[f"classify c={IMAGE_CONCURRENCY} p99 ms"] = point.p99_ms
        print(f"    {tree:7} classify c={IMAGE_CONCURRENCY} {point.rps:8,.0f} req/s", flush=True)
    finally:
        server.stop()
    return results


def jobs_run(
    urls: dict[str, str], repo: Path, root: Path, env: dict[str, str], seconds: int
) -> dict[str, float]:
    results: dict[str, float] = {}
    for name, url in urls.items():
        for row in jobs.measure_database(name, url, repo, root, seconds, env):
            prefix = f"{name} {row['workers']}w"
            results[f"{prefix} submits/s"] = row["submitted_per_s"]
            results[f"{prefix} submit p99 ms"] = row["submit_p99_ms"]
            results[f"{prefix} drain jobs/s"] = row["drain_jobs_per_s"]
            results[f"{prefix} end-to-end jobs/s"] = row["end_to_end_jobs_per_s"]
    return results


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = ["| point | before | after | after / before |", "|---|---|---|---|"]
    for key, old in before.items():
        new = after[key]
        lines.append(f"| {key} | {old:,.2f} | {new:,.2f} | {new / old if old else 0:.3f} |")
    return "\n".join(lines)


async def _admin(admin: str, statement: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-src", required=True, type=Path, help="the base tree's src/")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="seconds per serving point")
    parser.add_argument("--job-seconds", type=int, default=8)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--skip-jobs", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    trees = {"before": {"PYTHONPATH": str(args.base_src.resolve())}, "after": {}}
    repo = ensure_example_repository(default_cache_dir())
    serving: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    job_runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    database = f"modelplex_compare_{os.getpid()}"
    admin = args.postgres_url
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs_repo = jobs.make_repository(root)
        asyncio.run(_admin(admin, f'CREATE DATABASE "{database}"'))
        pg_url = (
            admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            + f"/{database}"
        )
        urls = {"postgresql": pg_url, "sqlite": f"sqlite+aiosqlite:///{root / 'bench.db'}"}
        try:
            for run in range(1, args.runs + 1):
                for tree, env in trees.items():
                    print(f"run {run}, {tree}: serving ...", flush=True)
                    serving[tree].append(serving_run(repo, tree, env, args.seconds))
                if args.skip_jobs:
                    continue
                for tree, env in trees.items():
                    print(f"run {run}, {tree}: jobs ...", flush=True)
                    job_runs[tree].append(jobs_run(urls, jobs_repo, root, env, args.job_seconds))
        finally:
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "base_src": str(args.base_src),
        "runs": args.runs,
        "serving": serving,
        "jobs": job_runs,
    }
    out = RESULTS / f"compare-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nserving, median of {args.runs} runs\n")
    print(table(medians(serving["before"]), medians(serving["after"])))
    if not args.skip_jobs:
        print(f"\njobs, median of {args.runs} runs\n")
        print(table(medians(job_runs["before"]), medians(job_runs["after"])))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
