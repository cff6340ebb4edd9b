"""Durability with real processes: kill -9 a worker, restart the server, SIGTERM drains."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_digits

from modelplex.server import start
from tests.conftest import wait_ready
from tests.databases import fresh_database
from tests.jobs.conftest import job_settings
from tests.jobs.harness import WorkerProcess, wait_for, wait_job

DIGIT = load_digits(return_X_y=True)[0][0].tolist()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database(request, request.param, tmp_path)


def test_killed_workers_job_is_claimed_again_and_completes_once(
    database: str, jobs_repo: Path, tmp_path: Path
) -> None:
    settings = job_settings(tmp_path, database, job_lease_s=2.0)
    with (
        start(settings, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        first = WorkerProcess(settings, jobs_repo, database)
        second: WorkerProcess | None = None
        try:
            job_id = client.post(
                "/v1/jobs", json={"model": "sleepy", "input": {"instance": [1, 2]}}
            ).json()["id"]
            wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "PROCESSING")
            first.kill()  # SIGKILL mid-inference: no chance to release the job
            second = WorkerProcess(settings, jobs_repo, database)
            done = wait_job(client, job_id)
        finally:
            for worker in (first, second):
                if worker is not None:
                    worker.terminate()
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 2
    assert done["result"]["predictions"] == [{"y": [2.0, 4.0]}]
    lost, finished = done["history"]
    assert lost["error"]["code"] == "LEASE_EXPIRED"
    assert lost["attempt"] == 1
    assert finished["attempt"] == 2
    assert finished["worker"] != lost["worker"]


def test_queued_jobs_survive_a_server_restart(
    database: str, jobs_repo: Path, tmp_path: Path
) -> None:
    settings = job_settings(tmp_path, database)  # no workers: jobs stay queued
    with (
        start(settings, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        ids = [
            client.post("/v1/jobs", json={"model": "digits", "input": {"instance": DIGIT}}).json()[
                "id"
            ]
            for _ in range(6)
        ]
        assert {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"QUEUED"}
    embedded = job_settings(tmp_path, database, workers=1)  # modelplex serve's own worker
    with (
        start(embedded, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        finished = [wait_job(client, i) for i in ids]
    assert {j["status"] for j in finished} == {"COMPLETED"}
    assert all(j["attempts"] == 1 for j in finished)


def test_sigterm_lets_the_running_job_finish(
    database: str, jobs_repo: Path, tmp_path: Path
) -> None:
    settings = job_settings(tmp_path, database, job_drain_s=20.0)
    with (
        start(settings, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        worker = WorkerProcess(settings, jobs_repo, database)
        job_id = client.post(
            "/v1/jobs", json={"pipeline": "slow-steps", "input": {"slices": 15, "slice_s": 0.1}}
        ).json()["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "PROCESSING")
        assert worker.terminate() == 0  # drains: returns only after the job is written
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "COMPLETED"
    assert job["attempts"] == 1


def test_an_idle_embedded_worker_is_woken_by_a_submission(
    database: str, jobs_repo: Path, tmp_path: Path
) -> None:
    # The fallback poll is a minute: only a wake-up (a byte from `serve` on SQLite,
    # NOTIFY on PostgreSQL) gets the job run within the wait below.
    settings = job_settings(tmp_path, database, workers=1, job_poll_s=60.0)
    with (
        start(settings, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        wait_ready(client)
        first = client.post("/v1/jobs", json={"model": "digits", "input": {"instance": DIGIT}})
        # The worker may still be starting: the first job proves it is up and idle.
        assert wait_job(client, first.json()["id"])["status"] == "COMPLETED"
        for _ in range(3):
            job_id = client.post(
                "/v1/jobs", json={"model": "digits", "input": {"instance": DIGIT}}
            ).json()["id"]
            url = f"/v1/jobs/{job_id}"
            assert wait_for(lambda u=url: client.get(u).json()["status"] == "COMPLETED", 20)


def _niceness(pid: int) -> int:
    # /proc/<pid>/stat: the command may hold spaces; fields after ")" are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of the whole line: nice


def test_a_worker_process_runs_nicer_than_the_server(jobs_repo: Path, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    settings = job_settings(tmp_path, database, worker_nice=7)
    worker = WorkerProcess(settings, jobs_repo, database)
    try:
        wait_for(lambda: _niceness(worker.pid) == os.nice(0) + 7)
    finally:
        worker.terminate()
