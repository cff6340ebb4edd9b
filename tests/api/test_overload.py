"""Overload is refused at once with RESOURCE_EXHAUSTED and `Retry-After`, never
queued without bound: by a model's expected queue wait, and by the requests a
serving process works on at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from modelplex.server import start
from tests.conftest import settings_for, wait_ready
from tests.helpers import write_python_model

ONE_AT_A_TIME = "[batching]\nmax_batch_size = 1\nmax_queue_size = 64\n"
BODY = {"instances": [[1.0, 2.0]]}


async def _burst(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        calls = [client.post("/v1/models/m/predict", json=BODY) for _ in range(count)]
        return list(await asyncio.gather(*calls))


def _refusals(responses: list[httpx.Response]) -> list[httpx.Response]:
    refused = [r for r in responses if r.status_code != 200]
    for response in refused:
        assert response.status_code == 503
        assert response.json()["code"] == "RESOURCE_EXHAUSTED"
        assert int(response.headers["retry-after"]) >= 1
    for response in responses:
        if response.status_code == 200:
            assert response.json()["predictions"] == [{"y": [2.0, 4.0]}]
    return refused


def test_a_request_that_would_wait_too_long_is_refused(tmp_path: Path) -> None:
    """Calls of 200 ms, one at a time, and a 500 ms bound on the expected wait: the
    queue has room for 64 rows, but only about two may wait."""
    repo = tmp_path / "repo"
    write_python_model(repo, "m", delay_ms=200, batching=ONE_AT_A_TIME)
    settings = settings_for(tmp_path, max_queue_wait_ms=500)
    with start(settings, repo) as server, httpx.Client(base_url=server.url) as http:
        wait_ready(http)
        assert http.post("/v1/models/m/predict", json=BODY).status_code == 200  # measured
        responses = asyncio.run(_burst(server.url, 10))
        refused = _refusals(responses)
        assert 5 <= len(refused) <= 8  # one runs, two or three wait, the rest are refused
        assert all("would wait about" in r.json()["detail"] for r in refused)
        # Nothing was lost: the queue drained and the model serves again.
        assert http.post("/v1/models/m/predict", json=BODY).status_code == 200


def test_the_first_requests_are_never_refused_for_their_wait(tmp_path: Path) -> None:
    """Before a batch has been measured there is no estimate: only rows bound."""
    repo = tmp_path / "repo"
    write_python_model(repo, "m", delay_ms=100, batching=ONE_AT_A_TIME)
    settings = settings_for(tmp_path, max_queue_wait_ms=1)
    with start(settings, repo) as server, httpx.Client(base_url=server.url) as http:
        wait_ready(http)
        responses = asyncio.run(_burst(server.url, 4))
        assert [r.status_code for r in responses] == [200] * 4


def test_requests_beyond_the_in_flight_bound_are_refused_and_probes_still_answer(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", delay_ms=800, batching=ONE_AT_A_TIME)
    settings = settings_for(tmp_path, max_inflight_requests=3, max_queue_wait_ms=0)

    async def scenario(url: str) -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            burst = asyncio.ensure_future(_burst(url, 8))
            await asyncio.sleep(0.3)  # the burst is in progress
            probes = [(await client.get(path)).status_code for path in ("/healthz", "/readyz")]
            return await burst, probes

    with start(settings, repo) as server, httpx.Client(base_url=server.url) as http:
        wait_ready(http)
        responses, probes = asyncio.run(scenario(server.url))
        refused = _refusals(responses)
        assert len(refused) == 5
        assert all("limit 3" in r.json()["detail"] for r in refused)
        assert probes == [200, 200]
        assert http.post("/v1/models/m/predict", json=BODY).status_code == 200
