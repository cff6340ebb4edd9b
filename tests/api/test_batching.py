"""Dynamic batching over real HTTP: fewer model calls than requests, each caller its own rows.

Deterministic: the model's first call is held at a gate until every other
request is queued behind it, so they must all share the next call.
"""

from __future__ import annotations

import asyncio

import httpx

from modelplex.server import RunningServer
from tests.gates import GATES


def _stats(client: httpx.Client, model: str) -> dict[str, int]:
    detail = client.get(f"/v1/models/{model}").json()
    stats: dict[str, int] = detail["version_details"][0]["stats"]
    return stats


def test_concurrent_requests_share_model_calls(
    zoo: httpx.Client, zoo_server: RunningServer
) -> None:
    n = 12
    gate = GATES["batched"]
    before = _stats(zoo, "batched")
    batcher = zoo_server.modelplex.registry.get("batched").batcher

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=zoo_server.url, timeout=30) as http:

            def send(i: int) -> asyncio.Task[httpx.Response]:
                body = {"instance": [i, 100 + i]}
                headers = {"X-Response-Detail": "verbose"}
                return asyncio.create_task(
                    http.post("/v1/models/batched/predict", json=body, headers=headers)
                )

            gate.open.clear()
            gate.entered.clear()
            gate.calls.clear()
            first = send(0)
            assert await asyncio.to_thread(gate.entered.wait, 10), "the model was never called"
            rest = [send(i) for i in range(1, n)]
            for _ in range(1000):  # bounded: until the others wait behind the held call
                if batcher.queued_rows == n - 1:
                    break
                await asyncio.sleep(0.01)
            gate.open.set()
            return [await first, *[await r for r in rest]]

    try:
        responses = asyncio.run(burst())
    finally:
        gate.open.set()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for i, response in enumerate(responses):
        assert response.json()["predictions"] == [{"y": [2.0 * i, 2.0 * (100 + i)]}]
    assert gate.calls == [1, n - 1]  # the held call, then everyone else in one batch
    after = _stats(zoo, "batched")
    assert after["inference_count"] - before["inference_count"] == n
    assert after["execution_count"] - before["execution_count"] == 2
    assert max(r.json()["metadata"]["batch_size"] for r in responses) == n - 1
