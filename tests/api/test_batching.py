"""Dynamic batching over real HTTP: fewer model calls than requests, each caller its own rows."""

from __future__ import annotations

import asyncio

import httpx

from modelplex.server import RunningServer


def _stats(client: httpx.Client, model: str) -> dict[str, int]:
    detail = client.get(f"/v1/models/{model}").json()
    stats: dict[str, int] = detail["version_details"][0]["stats"]
    return stats


def test_concurrent_requests_share_model_calls(
    zoo: httpx.Client, zoo_server: RunningServer
) -> None:
    n = 12
    before = _stats(zoo, "batched")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=zoo_server.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/v1/models/batched/predict",
                        json={"instance": [i, 100 + i]},
                        headers={"X-Response-Detail": "verbose"},
                    )
                    for i in range(n)
                )
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for i, response in enumerate(responses):
        assert response.json()["predictions"] == [{"y": [2.0 * i, 2.0 * (100 + i)]}]
    after = _stats(zoo, "batched")
    calls = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == n
    assert calls < n
    assert max(r.json()["metadata"]["batch_size"] for r in responses) > 1
