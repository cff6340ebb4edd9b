"""Thread pools by purpose: bounded, and one kind of slow work never stalls another.

The pool itself in-process; then a real server whose callback DNS lookups and
model reloads are held still by the test while ordinary requests go on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelplex.errors import ResourceExhausted
from modelplex.executors import Executors, Pool
from modelplex.server import RunningServer, start
from modelplex.settings import Settings
from tests.conftest import settings_for, wait_ready
from tests.helpers import write_python_model

HOLD_S = 30.0
"""The longest a held lookup or load waits for the test to let it go."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the pool ---------------------------------------------------------------------
def test_a_full_pool_refuses_at_once_and_recovers() -> None:
    pool = Pool("test", 2, queue_size=1)
    go = threading.Event()
    held = [pool.submit(go.wait, HOLD_S) for _ in range(3)]  # two running, one waiting
    with pytest.raises(ResourceExhausted, match="busy"):
        pool.submit(go.wait, HOLD_S)
    assert pool.pending == 3
    go.set()
    assert [f.result(timeout=HOLD_S) for f in held] == [True, True, True]
    assert pool.submit(sum, [1, 2]).result(timeout=HOLD_S) == 3
    pool.close()


def test_a_pool_never_runs_more_than_its_threads() -> None:
    pool = Pool("test", 3)
    lock, running, most = threading.Lock(), [0], [0]
    go = threading.Event()

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        go.wait(HOLD_S)
        with lock:
            running[0] -= 1

    futures = [pool.submit(work) for _ in range(10)]
    deadline = time.monotonic() + HOLD_S
    while running[0] < 3 and time.monotonic() < deadline:  # three in: then open the gate
        time.sleep(0.005)
    go.set()
    for future in futures:
        future.result(timeout=HOLD_S)
    assert most[0] == 3
    pool.close()


@pytest.mark.anyio
async def test_work_that_waited_past_its_timeout_never_runs() -> None:
    pool = Pool("test", 1)
    go = threading.Event()
    ran: list[str] = []
    first = pool.submit(go.wait, HOLD_S)
    with pytest.raises(TimeoutError):
        await pool.run(ran.append, "late", timeout_s=0.01)
    go.set()
    first.result(timeout=HOLD_S)
    await pool.run(ran.append, "next")
    assert ran == ["next"]
    pool.close()


def test_every_purpose_has_its_own_pool() -> None:
    executors = Executors.build(Settings(worker_concurrency=64, model_load_threads=1), steps=True)
    pools = [executors.blobs, executors.dns, executors.loads, executors.steps]
    assert len({id(p) for p in pools}) == 4
    assert executors.steps is not None
    assert executors.steps.threads == 64  # one thread per job the worker runs
    assert executors.loads.threads == 1
    executors.close()


# -- a real server --------------------------------------------------------------
@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_python_model(tmp_path / "repo", "doubler")
    return tmp_path / "repo"


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    settings = settings_for(
        tmp_path,
        webhook_allow_private=False,
        callback_dns_timeout_s=0.3,
        model_load_threads=1,
        default_max_queue_size=16_384,  # room for one big request's rows
    )
    with start(settings, repo) as running:
        yield running


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Lookups of *.slow.test hang until the test sets the event."""
    answer = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".slow.test"):
            answer.wait(HOLD_S)
            return real("93.184.215.14", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield answer
    answer.set()


def big_predict_body() -> dict[str, Any]:
    """Over 256 KiB: parsed on a thread, not on the event loop."""
    return {"instances": np.ones((12_000, 2)).tolist()}


def test_a_flood_of_slow_callback_hosts_stalls_nothing_else(
    server: RunningServer, slow_dns: threading.Event
) -> None:
    answers: list[httpx.Response] = []

    def submit(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            body = {"model": "doubler", "input": {"instance": [1.0, 2.0]}}
            body["callback_url"] = f"http://host-{n}.slow.test/hook"
            answers.append(http.post("/v1/jobs", json=body))

    with httpx.Client(base_url=server.url, timeout=60) as http:
        wait_ready(http)
        flood = [threading.Thread(target=submit, args=(n,)) for n in range(40)]
        for thread in flood:
            thread.start()
        # While every lookup hangs: bodies parsed on threads, jobs without callbacks.
        predicted = http.post("/v1/models/doubler/predict", json=big_predict_body())
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == 12_000
        job = http.post("/v1/jobs", json={"model": "doubler", "input": {"instance": [1, 2]}})
        assert job.status_code == 202, job.text
        for thread in flood:
            thread.join(HOLD_S)
        assert not slow_dns.is_set()  # every answer came while the lookups still hung
        assert len(answers) == 40
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] in {"SERVICE_UNAVAILABLE", "RESOURCE_EXHAUSTED"}
            assert answer.headers["Retry-After"]
        assert any("did not resolve within" in a.json()["detail"] for a in answers)
        slow_dns.set()
        assert http.get("/healthz").status_code == 200


def test_model_loads_are_bounded_and_stall_nothing_else(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = server.modelplex.registry
    real_load = registry.load_model
    loading, finish = threading.Event(), threading.Event()

    def slow_load(name: str) -> Any:
        loading.set()
        finish.wait(HOLD_S)
        return real_load(name)

    with httpx.Client(base_url=server.url, timeout=60) as http:
        wait_ready(http)
        monkeypatch.setattr(registry, "load_model", slow_load)
        first: list[httpx.Response] = []

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as other:
                first.append(other.post("/v2/repository/models/doubler/load"))

        loader = threading.Thread(target=load)
        loader.start()
        try:
            assert loading.wait(HOLD_S)
            refused = http.post("/v2/repository/models/doubler/load")
            assert refused.status_code == 503
            assert "busy" in refused.json()["error"]
            assert refused.headers["Retry-After"]
            ordinary = http.post("/v1/models/doubler/predict", json={"instance": [1.0, 2.0]})
            assert ordinary.json()["predictions"] == [{"y": [2.0, 4.0]}]
        finally:
            finish.set()
            loader.join(HOLD_S)
        assert [r.status_code for r in first] == [200]
        assert http.post("/v2/repository/models/doubler/load").status_code == 200
