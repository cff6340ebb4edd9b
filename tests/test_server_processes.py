"""`http_processes`: replica serving processes on the first one's port, over real sockets."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from modelplex.server import RunningServer, start
from tests.conftest import settings_for
from tests.helpers import write_python_model

BODY = {"instance": [1.0, 2.0]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _served_by_both(server: RunningServer) -> tuple[int, int]:
    """Predict on fresh connections until both processes have answered (bounded);
    the first process's own counter tells its answers from the replica's."""
    stats = server.modelplex.registry
    ok = 0
    for _ in range(2000):
        # A new connection each time: the kernel picks the process per connection.
        response = httpx.post(
            f"{server.url}/v1/models/doubler/predict", json=BODY, timeout=30,
            headers={"Connection": "close"},
        )  # fmt: skip
        if response.status_code == 200:
            assert response.json()["predictions"] == [{"y": [2.0, 4.0]}]
            ok += 1
        else:  # the replica may still be loading its models
            assert response.json()["code"] == "MODEL_NOT_READY", response.text
        first = stats.get("doubler").stats.success.count if stats.loaded.is_set() else 0
        if 0 < first < ok:
            return first, ok - first
        time.sleep(0.005)
    raise AssertionError(f"only one process answered ({ok} answers)")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repository = tmp_path / "repo"
    write_python_model(repository, "doubler")
    return repository


def test_two_processes_share_the_port_and_stop_by_pid(tmp_path: Path, repo: Path) -> None:
    settings = settings_for(tmp_path, http_processes=2)
    with start(settings, repo) as server:
        [replica] = server.replica_pids
        assert replica != os.getpid()
        assert _alive(replica)
        _served_by_both(server)
        # Either process takes jobs: they go to the one shared store.
        for _ in range(4):
            job = httpx.post(
                f"{server.url}/v1/jobs", json={"model": "doubler", "input": BODY},
                headers={"Connection": "close"},
            )  # fmt: skip
            assert job.status_code == 202, job.text
    for _ in range(500):  # reaped by the first process as it stopped
        if not _alive(replica):
            break
        time.sleep(0.01)
    assert not _alive(replica)


def test_a_replica_that_dies_is_replaced(tmp_path: Path, repo: Path) -> None:
    settings = settings_for(tmp_path, http_processes=2)
    with start(settings, repo) as server:
        [replica] = server.replica_pids
        os.kill(replica, signal.SIGKILL)
        for _ in range(1000):
            pids = server.replica_pids
            if pids and pids[0] != replica:
                break
            time.sleep(0.01)
        [replacement] = server.replica_pids
        assert replacement != replica
        _served_by_both(server)
        health = httpx.get(f"{server.url}/healthz")
        assert health.status_code == 200
