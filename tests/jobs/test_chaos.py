"""Chaos, bounded, on PostgreSQL: a few hundred small jobs while worker processes
are killed with SIGKILL every couple of seconds and the API server is killed
and started again once. Every job must end COMPLETED, none lost; a job whose
step kills its own worker ends FAILED with WORKER_CRASHED after its crash
budget, and its neighbours complete.

Every process is real (`modelplex serve`, `modelplex worker`) and is killed by
its PID. The whole run is bounded by `RUN_S`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelplex.jobs.supervisor import worker_environment
from modelplex.settings import Settings
from tests.conftest import settings_for
from tests.databases import fresh_database
from tests.jobs.harness import free_port

JOBS = 240
JOB_S = 0.3
"""Each job's own work: long enough that the jobs outlast several kills, even on a
fast machine (240 jobs on 12 slots take at least 6 s)."""
WORKERS = 3
KILL_EVERY_S = 1.0
RUN_S = 150.0
MAX_CRASHES = 5

STEPS = """
import os
import signal
import time


def work(ctx, data):
    time.sleep(data["sleep_s"])
    return {"n": data["n"]}


def die(ctx, data):
    os.kill(os.getpid(), signal.SIGKILL)  # the worker goes with it, every time
"""
PIPELINES = {
    "tiny": '[[steps]]\nname = "work"\nfunction = "work"\n',
    "poison": '[[steps]]\nname = "die"\nfunction = "die"\n',
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name, toml in PIPELINES.items():
        (root / name).mkdir(parents=True)
        (root / name / "pipeline.toml").write_text(toml)
        (root / name / "steps.py").write_text(textwrap.dedent(STEPS))
    return root


class Process:
    """A modelplex process, its output in a file (a full pipe would stall it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "modelplex", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.alive:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()


def server_env(settings: Settings, repo: Path, url: str, port: int) -> dict[str, str]:
    env = worker_environment(settings, repo, url)
    env.update(MODELPLEX_PORT=str(port), MODELPLEX_WORKERS="0", MODELPLEX_GRPC_ENABLED="false")
    return env


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


def wait_up(client: httpx.Client, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not come up")


def post(client: httpx.Client, body: dict[str, object], key: str, deadline: float) -> str:
    """Submit, retrying while the server restarts (the idempotency key: never twice)."""
    while True:
        try:
            response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if response.status_code in (200, 201, 202):
                job_id: str = response.json()["id"]
                return job_id
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "submission never accepted"
        time.sleep(0.1)


def test_kill_9_workers_and_the_server_every_job_completes_and_the_poison_job_fails(
    request: pytest.FixtureRequest, repo: Path, tmp_path: Path, processes: list[Process]
) -> None:
    url = fresh_database(request, "postgresql", tmp_path)
    settings = settings_for(
        tmp_path,
        database_url=url,
        job_lease_s=1.0,
        job_poll_s=0.5,
        job_max_crashes=MAX_CRASHES,
        job_retry_base_s=0.05,
        job_retry_cap_s=0.2,
        worker_concurrency=4,
    )
    port = free_port()
    env = server_env(settings, repo, url, port)
    worker_env = worker_environment(settings, repo, url)
    logs = tmp_path / "logs"
    logs.mkdir()
    deadline = time.monotonic() + RUN_S
    rng = random.Random(8)

    def spawn(args: list[str], environment: dict[str, str]) -> Process:
        process = Process(args, environment, logs / f"{args[0]}-{len(processes)}.log")
        processes.append(process)
        return process

    server = spawn(["serve"], env)
    workers = [spawn(["worker"], worker_env) for _ in range(WORKERS)]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        wait_up(client, deadline)
        ids: list[str] = []
        poison = post(client, {"pipeline": "poison", "input": {}}, "chaos-poison", deadline)
        kills, restarted, next_kill = 0, False, time.monotonic() + KILL_EVERY_S
        pending: set[str] = set()
        while True:
            if len(ids) < JOBS:  # submit in slices, between the kills
                for n in range(len(ids), min(JOBS, len(ids) + 40)):
                    body = {"pipeline": "tiny", "input": {"n": n, "sleep_s": JOB_S}}
                    ids.append(post(client, body, f"chaos-{n}", deadline))
                pending = set(ids) | {poison}
            if time.monotonic() >= next_kill and kills < 12:
                victim = rng.choice([w for w in workers if w.alive] or workers)
                victim.kill()  # SIGKILL, by PID: no drain, no release
                kills += 1
                next_kill = time.monotonic() + KILL_EVERY_S
                if kills == 2 and not restarted:  # the API server too, once
                    server.kill()
                    server = spawn(["serve"], env)
                    wait_up(client, deadline)
                    restarted = True
            # Killed workers, and those the poison job took, are started again.
            workers = [w if w.alive else spawn(["worker"], worker_env) for w in workers]
            pending = {i for i in pending if not _finished(client, i)}
            if len(ids) == JOBS and not pending:
                break
            assert time.monotonic() < deadline, f"{len(pending)} jobs unfinished"
            time.sleep(0.25)
        jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
        poisoned = client.get(f"/v1/jobs/{poison}").json()
    assert restarted
    assert kills >= 3
    statuses = {j["status"] for j in jobs}
    failed = [(j["id"], j["error"]) for j in jobs if j["status"] != "COMPLETED"]
    assert statuses == {"COMPLETED"}, failed
    assert sorted(j["result"]["n"] for j in jobs) == list(range(JOBS))  # none lost
    assert poisoned["status"] == "FAILED"
    assert poisoned["error"]["code"] == "WORKER_CRASHED"
    assert any(j["attempts"] > 1 for j in jobs)  # the kills did catch jobs mid-run


def _finished(client: httpx.Client, job_id: str) -> bool:
    try:
        response = client.get(f"/v1/jobs/{job_id}")
    except httpx.TransportError:
        return False
    return response.status_code == 200 and response.json()["status"] in (
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    )
