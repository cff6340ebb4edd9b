"""`GET /v1/batches`: newest first, cursor pages, filters, as `GET /v1/jobs` lists jobs."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from sklearn.datasets import load_digits

from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import wait_for

DIGITS = load_digits(return_X_y=True)[0]


def _batch(client: httpx.Client, lines: list[bytes]) -> str:
    response = client.post(
        "/v1/batches?model=digits",
        content=b"\n".join(lines),
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    wait_for(lambda: client.get(f"/v1/batches/{batch_id}").json()["finished_at"])
    return str(batch_id)


def _pages(client: httpx.Client, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/batches", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["batches"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_batches_are_listed_newest_first_in_pages(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    good = orjson.dumps({"custom_id": "ok", "input": DIGITS[0].tolist()})
    completed = _batch(client, [good])
    partly = _batch(client, [good, b"not json"])
    failed = _batch(client, [b"not json"])
    pages = _pages(client, limit=2)
    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    listed = [b["id"] for page in pages for b in page]
    assert len(listed) == len(set(listed))
    ours = [i for i in listed if i in {completed, partly, failed}]
    assert ours == [failed, partly, completed]
    first = pages[0][0]
    assert first["links"]["self"] == f"/v1/batches/{first['id']}"
    assert {"counts", "status", "progress", "created_at", "finished_at"} <= first.keys()

    by_status = {
        status: {b["id"] for page in _pages(client, status=status) for b in page}
        for status in ("completed", "PARTIALLY_FAILED", "FAILED")
    }
    assert completed in by_status["completed"]
    assert partly in by_status["PARTIALLY_FAILED"]
    assert failed in by_status["FAILED"]
    assert not by_status["completed"] & (by_status["PARTIALLY_FAILED"] | by_status["FAILED"])
    assert {b["id"] for page in _pages(client, model="digits") for b in page} >= {
        completed, partly, failed,
    }  # fmt: skip
    assert _pages(client, model="nothing-like-it") == [[]]


def test_bad_list_queries_are_refused(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    for query in ("status=DONE", "status=CREATING", "limit=0", "limit=501"):
        response = client.get(f"/v1/batches?{query}")
        assert response.status_code == 422, query
        assert response.json()["code"] == "INVALID_INPUT"
