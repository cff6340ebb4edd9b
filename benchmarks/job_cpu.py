"""Before/after, by CPU cost: server CPU per job submission and worker CPU per job run.

    .venv/bin/python -m benchmarks.job_cpu --base-src /tmp/base/src [--runs 3]

Throughput on a small shared machine drifts by a fifth between runs; the CPU
a process spends per operation drifts much less, so this is the comparison to
trust for a refactoring of the job path. SQLite (the drain on any migrated
database with `--drain-database`), no embedded workers; each run measures the
base tree, then this checkout:
* submit: wrk with 50 connections POSTs a one-step pipeline job for 8 s;
  server CPU (whole process tree) per accepted job;
* drain: one `modelplex worker` (concurrency 64) runs the queued jobs; its CPU
  per job from 4 s after its start (once loaded) to the last job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import jobs
from benchmarks.harness import Server, cpu_seconds, free_port, measure, tree, wrk
from modelplex.jobs.supervisor import worker_environment
from modelplex.settings import Settings

WORKER_LOAD_S = 4.0


def submit_cpu(repo: Path, root: Path, body: Path, label: str, env: dict[str, str]) -> float:
    port = free_port()
    server = Server(
        label,
        [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
         "--model-repository", str(repo)],
        f"http://127.0.0.1:{port}",
        "/readyz",
        {"MODELPLEX_DATA_DIR": str(root / f"data-{label}"), "MODELPLEX_WORKERS": "0",
         "MODELPLEX_GRPC_ENABLED": "false", **env},
    )  # fmt: skip
    try:
        load = wrk(server.url + "/v1/jobs", body, "application/json")
        point = measure(server, "submit", load, 50, warmup_s=2, seconds=8)
    finally:
        server.stop()
    return point.server_cpu_us_per_req


def drain_cpu(repo: Path, root: Path, body: Path, env: dict[str, str], url: str) -> float:
    settings = Settings(
        database_url=url, data_dir=root / "data", workers=0, worker_concurrency=64,
        job_poll_s=0.05,
    )  # fmt: skip
    asyncio.run(jobs.reset(url))
    server = jobs.Server(settings, repo, free_port())
    try:
        queued = int(jobs.submit_with_wrk(server.url, body, 6)["requests"])
    finally:
        server.stop()
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelplex", "worker"],
        env={**worker_environment(settings, repo, url), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(WORKER_LOAD_S)  # not a measurement: the worker loads before we count
        before = cpu_seconds(tree(worker.pid))
        jobs.wait_all_done(url, queued)
        spent = cpu_seconds(tree(worker.pid)) - before
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return spent / queued * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-src", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--drain-database",
        default=None,
        help="a migrated, expendable job database (default: SQLite)",
    )
    args = parser.parse_args()
    trees = {"before": {"PYTHONPATH": str(args.base_src.resolve())}, "after": {}}
    results: dict[str, dict[str, list[float]]] = {t: {"submit": [], "drain": []} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = jobs.make_repository(root)
        body = root / "submit.json"
        body.write_text(json.dumps({"pipeline": "noop", "input": {"x": 1}}))
        for run in range(1, args.runs + 1):
            for label, env in trees.items():
                submit = submit_cpu(repo, root, body, f"{label}-{run}", env)
                url = args.drain_database or f"sqlite+aiosqlite:///{root / 'drain.db'}"
                drain = drain_cpu(repo, root, body, env, url)
                results[label]["submit"].append(submit)
                results[label]["drain"].append(drain)
                print(f"run {run} {label:6} submit {submit:6.0f} us/job  drain {drain:6.0f} us/job",
                      flush=True)  # fmt: skip
    print("\n| CPU per job (median) | before | after | after / before |\n|---|---|---|---|")
    for what in ("submit", "drain"):
        old = statistics.median(results["before"][what])
        new = statistics.median(results["after"][what])
        print(f"| {what} | {old:,.0f} us | {new:,.0f} us | {new / old:.3f} |")


if __name__ == "__main__":
    main()
