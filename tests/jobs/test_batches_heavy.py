"""Big batches over a real socket, with a real worker, on SQLite and PostgreSQL:
many refused lines (one row each, counted in the batch's row, shown a page at a
time), and chunk inputs over `blob_threshold_bytes` kept in the blob store."""

from __future__ import annotations

import asyncio

import orjson

from modelplex.api.views import REFUSALS_SHOWN
from modelplex.records import Job
from modelplex.storage.sql import SqlStore
from modelplex.storage.sql.engines import create_engines
from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import WAIT_S, wait_for
from tests.jobs.test_jobs_api import DIGITS


def _post(env: JobsEnv, query: str, lines: list[bytes]) -> str:
    response = env.client.post(
        f"/v1/batches?{query}",
        content=b"\n".join(lines),
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def _finished(env: JobsEnv, batch_id: str) -> dict[str, object]:
    # The first test of the module also waits for the worker process to load its models.
    batch: dict[str, object] = wait_for(
        lambda: (b := env.client.get(f"/v1/batches/{batch_id}").json())["finished_at"] and b,
        timeout=3 * WAIT_S,
    )
    return batch


def test_a_batch_with_many_refused_lines(jobs_env: JobsEnv) -> None:
    good = [orjson.dumps({"custom_id": f"ok-{i}", "input": DIGITS[i].tolist()}) for i in range(4)]
    bad = [b"{not json %d" % i for i in range(2500)]
    batch_id = _post(jobs_env, "model=digits", good[:2] + bad + good[2:])
    batch = _finished(jobs_env, batch_id)
    assert batch["status"] == "COMPLETED"
    assert batch["counts"] == {
        "total": 2504, "completed": 4, "failed": 2500, "refused": 2500, "pending": 0,
        "cancelled": 0,
    }  # fmt: skip
    refusals = batch["refusals"]
    assert isinstance(refusals, list)
    assert [r["line"] for r in refusals] == list(range(3, 3 + REFUSALS_SHOWN))
    assert {r["error"]["code"] for r in refusals} == {"INVALID_INPUT"}
    errors = jobs_env.client.get(f"/v1/batches/{batch_id}/errors").content.splitlines()
    assert [orjson.loads(e)["line"] for e in errors] == list(range(3, 2503))
    results = jobs_env.client.get(f"/v1/batches/{batch_id}/results").content.splitlines()
    assert sorted(orjson.loads(r)["custom_id"] for r in results) == [f"ok-{i}" for i in range(4)]
    assert jobs_env.client.get("/healthz").status_code == 200


def test_chunk_inputs_over_the_threshold_live_in_the_blob_store(jobs_env: JobsEnv) -> None:
    threshold = jobs_env.settings.blob_threshold_bytes
    echo = "x" * (threshold // 2)  # a chunk of 3 such lines is over the threshold
    lines = [
        orjson.dumps({"custom_id": f"big-{i}", "input": {"slices": 1, "slice_s": 0, "echo": echo}})
        for i in range(5)
    ]
    lines.append(orjson.dumps({"custom_id": "small", "input": {"slices": 1, "slice_s": 0}}))
    batch_id = _post(jobs_env, "pipeline=slow-steps", lines)
    batch = _finished(jobs_env, batch_id)
    assert batch["status"] == "COMPLETED"
    results = [
        orjson.loads(r)
        for r in jobs_env.client.get(f"/v1/batches/{batch_id}/results").content.splitlines()
    ]
    by_id = {r["custom_id"]: r["output"] for r in results}
    assert [by_id[f"big-{i}"]["echo"] for i in range(5)] == [echo] * 5
    assert by_id["small"]["echo"] is None
    chunks = asyncio.run(_chunks(jobs_env.database_url, batch_id))
    assert [(c.input is None, c.input_ref is not None) for c in chunks] == [(True, True)] * 2
    assert all(c.input_ref and c.input_ref.startswith("local:") for c in chunks)


async def _chunks(url: str, batch_id: str) -> list[Job]:
    store = SqlStore(create_engines(url))
    try:
        return await store.batch_chunks(batch_id, -1, 100)
    finally:
        await store.close()
