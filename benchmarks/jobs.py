"""Job queue benchmark: throughput, submit latency and crash recovery, SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.jobs [--jobs 4000] [--postgres-url postgresql://postgres@127.0.0.1/postgres]

With a trivial one-step pipeline (`noop`), for each database and 1 and 2
`modelplex worker` processes:
* submit latency: `wrk` with 50 connections POSTing jobs for --seconds (no
  worker running), p50/p99;
* drain throughput: then the workers start on the queued jobs; jobs completed
  per second from the first claim to the last completion;
* end to end: workers running while wrk submits; jobs/s from the first
  submission to the last completion;
and, in the same run, a bare `FOR UPDATE SKIP LOCKED` claim-and-finish loop
in 2 processes (PostgreSQL) as the reference; and the time from a worker's
kill -9 to its job's re-claim with default settings (lease 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from benchmarks.harness import wrk
from modelplex.jobs.supervisor import worker_environment
from modelplex.settings import Settings
from modelplex.storage.sql.engines import create_engine, migrate

RESULTS = Path(__file__).resolve().parent / "results"
SUBMITTERS = 50
PIPELINE = """
[[steps]]
name = "noop"
function = "noop"
"""
STEPS = """
def noop(ctx, data):
    return data


def sleep(ctx, data):
    import time
    for _ in range(600):
        ctx.check_cancelled()
        time.sleep(0.1)
    return data
"""
SLOW_PIPELINE = """
[[steps]]
name = "sleep"
function = "sleep"
timeout_s = 3600
"""


def make_repository(root: Path) -> Path:
    repo = root / "repo"
    for name, toml in (("noop", PIPELINE), ("slow", SLOW_PIPELINE)):
        (repo / name).mkdir(parents=True)
        (repo / name / "pipeline.toml").write_text(toml)
        (repo / name / "steps.py").write_text(STEPS)
    return repo


class Server:
    def __init__(
        self, settings: Settings, repo: Path, port: int, extra_env: dict[str, str] | None = None
    ) -> None:
        env = worker_environment(settings, repo, settings.database_url or "")
        env.update(extra_env or {})
        env["MODELPLEX_WORKERS"] = "0"
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelplex", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(self.url + "/readyz", timeout=1)
                # A repository of pipelines alone is "not_ready" (no model) once loaded.
                if ready.status_code == 200 or ready.json().get("status") == "not_ready":
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_workers(
    settings: Settings, repo: Path, count: int, extra_env: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    env = {**worker_environment(settings, repo, settings.database_url or ""), **(extra_env or {})}
    return [
        subprocess.Popen([sys.executable, "-m", "modelplex", "worker"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]  # fmt: skip


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)


async def reset(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            for table in ("webhook_deliveries", "jobs", "batches"):
                await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


async def count_status(url: str) -> dict[str, int]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status"))
            ).all()
    finally:
        await engine.dispose()
    return {r[0]: int(r[1]) for r in rows}


async def first_claim_and_last_finish(url: str) -> tuple[float, float]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(text("SELECT min(started_at), max(finished_at) FROM jobs"))
            ).one()
    finally:
        await engine.dispose()
    return float(row[0]), float(row[1])


def wait_all_done(url: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = asyncio.run(count_status(url))
        if counts.get("COMPLETED", 0) >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"jobs did not finish: {counts}")


def submit_with_wrk(url: str, body: Path, seconds: int) -> dict[str, Any]:
    result = wrk(url + "/v1/jobs", body, "application/json")(SUBMITTERS, seconds)
    if result["non2xx"] or result["socket_errors"]:
        raise RuntimeError(f"submissions failed: {result}")
    return result


async def created_to_last_finish(url: str) -> float:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(text("SELECT min(created_at), max(finished_at) FROM jobs"))
            ).one()
    finally:
        await engine.dispose()
    return float(row[1]) - float(row[0])


def measure_database(
    name: str,
    url: str,
    repo: Path,
    root: Path,
    seconds: int,
    extra_env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`extra_env` reaches the server and worker processes (e.g. another source tree)."""
    body = root / "submit.json"
    body.write_text(json.dumps({"pipeline": "noop", "input": {"x": 1}}))
    rows = []
    for workers in (1, 2):
        settings = Settings(
            database_url=url, data_dir=root / f"data-{name}", workers=0, worker_concurrency=64,
            job_poll_s=0.05, job_retention_hours=24,
        )  # fmt: skip
        asyncio.run(reset(url))
        server = Server(settings, repo, 18_500 + workers, extra_env)
        try:
            # 1. Submissions alone (no worker running): latency at 50 concurrent submitters.
            submitted = submit_with_wrk(server.url, body, seconds)
            queued = submitted["requests"]
            # 2. Drain: the queued jobs, workers started afterwards.
            pool = start_workers(settings, repo, workers, extra_env)
            wait_all_done(url, queued)
            stop_workers(pool)
            first, last = asyncio.run(first_claim_and_last_finish(url))
            drain = queued / (last - first)
            # 3. End to end: submitting and working at the same time.
            asyncio.run(reset(url))
            pool = start_workers(settings, repo, workers, extra_env)
            time.sleep(3)  # workers load and start polling
            both = submit_with_wrk(server.url, body, seconds)
            wait_all_done(url, both["requests"])
            end_to_end = both["requests"] / asyncio.run(created_to_last_finish(url))
            stop_workers(pool)
        finally:
            server.stop()
        row = {
            "database": name,
            "workers": workers,
            "submitted_per_s": round(queued / (submitted["duration_us"] / 1e6)),
            "submit_p50_ms": round(submitted["p50_us"] / 1000, 2),
            "submit_p99_ms": round(submitted["p99_us"] / 1000, 2),
            "drain_jobs_per_s": round(drain),
            "end_to_end_jobs_per_s": round(end_to_end),
            "end_to_end_submit_p99_ms": round(both["p99_us"] / 1000, 2),
        }
        print(f"  {row}", flush=True)
        rows.append(row)
    return rows


BARE_LOOP = """
import asyncio, sys, asyncpg
async def main(url, n):
    conn = await asyncpg.connect(url)
    done = 0
    while True:
        row = await conn.fetchrow(
            "UPDATE bare_jobs SET status = 'running' WHERE id = (SELECT id FROM bare_jobs "
            "WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id")
        if row is None:
            break
        await conn.execute("UPDATE bare_jobs SET status = 'done' WHERE id = $1", row["id"])
        done += 1
    await conn.close()
asyncio.run(main(sys.argv[1], 0))
"""


async def _sql(admin_url: str, *statements: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(*statement)
    finally:
        await conn.close()


def bare_reference(admin_url: str, jobs: int) -> float:
    """Jobs/s of a bare claim-and-finish loop in 2 processes: the floor's reference."""
    asyncio.run(
        _sql(
            admin_url,
            ("DROP TABLE IF EXISTS bare_jobs",),
            ("CREATE TABLE bare_jobs (id serial primary key, status text not null)",),
            ("INSERT INTO bare_jobs (status) SELECT 'queued' FROM generate_series(1, $1)", jobs),
        )
    )
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", BARE_LOOP, admin_url]) for _ in range(2)]
    for proc in procs:
        proc.wait(timeout=600)
    rate = jobs / (time.perf_counter() - started)
    asyncio.run(_sql(admin_url, ("DROP TABLE bare_jobs",)))
    return rate


def reclaim_after_kill(url: str, repo: Path, root: Path) -> float:
    """Seconds from SIGKILL of the worker holding a job to another worker claiming it."""
    settings = Settings(database_url=url, data_dir=root / "data-kill", workers=0)  # default lease
    asyncio.run(reset(url))
    server = Server(settings, repo, 18_600)
    first = start_workers(settings, repo, 1)
    second: list[subprocess.Popen[bytes]] = []
    try:
        job_id = httpx.post(server.url + "/v1/jobs", json={"pipeline": "slow", "input": {}}).json()[
            "id"
        ]
        while httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["status"] != "PROCESSING":
            time.sleep(0.05)
        second = start_workers(settings, repo, 1)
        time.sleep(3)  # the second worker is up and polling before the kill
        os.kill(first[0].pid, signal.SIGKILL)
        first[0].wait()
        killed = time.perf_counter()
        while httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["attempts"] < 2:
            time.sleep(0.05)
        return time.perf_counter() - killed
    finally:
        httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel")
        stop_workers(second)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000, help="jobs for the bare reference loop")
    parser.add_argument("--seconds", type=int, default=8, help="seconds of submissions per point")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_repository(root)
        admin = args.postgres_url
        database = f"modelplex_bench_{os.getpid()}"

        async def create_db() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
            await conn.execute(f'CREATE DATABASE "{database}"')
            await conn.close()

        async def drop_db() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.close()

        asyncio.run(create_db())
        pg_url = (
            admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            + f"/{database}"
        )
        sqlite_url = f"sqlite+aiosqlite:///{root / 'bench.db'}"
        try:
            print("bare SKIP LOCKED loop, 2 processes ...", flush=True)
            bare = bare_reference(admin, args.jobs)
            print(f"  {bare:.0f} jobs/s", flush=True)
            rows = []
            for name, url in (("sqlite", sqlite_url), ("postgresql", pg_url)):
                print(f"{name} ...", flush=True)
                rows += measure_database(name, url, repo, root, args.seconds)
            reclaim = {}
            for name, url in (("sqlite", sqlite_url), ("postgresql", pg_url)):
                reclaim[name] = round(reclaim_after_kill(url, repo, root), 2)
                print(f"  kill -9 to re-claim ({name}): {reclaim[name]} s", flush=True)
            bare_after = bare_reference(admin, args.jobs)
        finally:
            asyncio.run(drop_db())
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "bare_skip_locked_jobs_per_s": {"before": round(bare), "after": round(bare_after)},
        "rows": rows,
        "kill_to_reclaim_s": reclaim,
    }
    out = RESULTS / f"jobs-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
