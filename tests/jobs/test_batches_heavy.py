"""Big batches over a real socket, with a real worker, on SQLite and PostgreSQL:
many refused lines (one row each, counted in the batch's row, shown a page at a
time), and chunk inputs over `blob_threshold_bytes` kept in the blob store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from modelplex.api.views import REFUSALS_SHOWN
from modelplex.records import Job
from modelplex.server import start
from modelplex.storage.sql import SqlStore
from modelplex.storage.sql.engines import create_engines
from modelplex.storage.sql.schema import batches, jobs
from tests.conftest import wait_ready
from tests.databases import fresh_database
from tests.jobs.conftest import JobsEnv, job_settings
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
    assert batch["status"] == "PARTIALLY_FAILED"
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


# -- a big file, streamed ----------------------------------------------------
BIG_LINES = 200_000
_INPUT = b"[0.5,1.5,2.5,3.5,4.5,5.5,6.5,7.5,8.5,9.5,0.25,1.25,2.25,3.25,4.25,5.25]"


def _big_file(lines: int, bad_at: int | None = None, bad: bytes = b"") -> Iterator[bytes]:
    """The file in pieces, never whole on the client's side either."""
    for first in range(0, lines, 5000):
        yield b"".join(
            bad + b"\n"
            if number == bad_at
            else b'{"custom_id":"line-%d","input":%s}\n' % (number, _INPUT)
            for number in range(first + 1, min(first + 5000, lines) + 1)
        )


def _peak_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


@dataclass
class BigEnv:
    client: httpx.Client
    database_url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def big_env(
    request: pytest.FixtureRequest, jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BigEnv]:
    """A server of its own (no worker: creation is what is measured), in this process:
    its peak RSS is this process's."""
    tmp = tmp_path_factory.mktemp(f"big-{request.param}")
    url = fresh_database(request, request.param, tmp)
    settings = job_settings(
        tmp, url, batch_chunk_size=500, max_batch_lines=BIG_LINES,
        max_upload_bytes=32 * 1024 * 1024, max_json_bytes=1024 * 1024,
    )  # fmt: skip
    with (
        start(settings, jobs_repo) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        wait_ready(client)
        yield BigEnv(client, url)


def _post_big(env: BigEnv, content: Iterator[bytes]) -> httpx.Response:
    return env.client.post(
        "/v1/batches?model=digits", content=content, headers={"content-type": "application/jsonl"}
    )


def test_a_big_file_is_streamed_not_held(big_env: BigEnv) -> None:
    size = sum(len(piece) for piece in _big_file(BIG_LINES))
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    before = _peak_kib()
    response = _post_big(big_env, _big_file(BIG_LINES))
    growth_mib = (_peak_kib() - before) / 1024
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["counts"]["total"] == BIG_LINES
    assert batch["counts"]["refused"] == 0
    assert batch["status"] == "PROCESSING"
    assert asyncio.run(_counts(big_env.database_url)) == (1, BIG_LINES // 500)
    # Read and parsed whole, these 20 MiB grow the peak by about 250 MiB (the body, its
    # lines, their objects, the chunk documents); streamed, by a few tens.
    assert size > 20 * 1024 * 1024
    assert growth_mib < 150, f"peak RSS grew {growth_mib:.0f} MiB for a {size >> 20} MiB file"
    assert big_env.client.get("/healthz").status_code == 200


def test_a_line_too_long_to_hold_is_refused_alone(big_env: BigEnv) -> None:
    long_line = b'{"custom_id":"long","input":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = _post_big(big_env, _big_file(20_000, bad_at=12_345, bad=long_line))
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["counts"]["total"] == 20_000
    [refusal] = big_env.client.get(f"/v1/batches/{batch_id}").json()["refusals"]
    assert refusal["line"] == 12_345
    assert refusal["error"]["code"] == "INVALID_INPUT"
    assert "bytes of JSON; the limit is 1048576" in refusal["error"]["message"]


def _fat_file(lines: int) -> Iterator[bytes]:
    for number in range(lines):
        yield b'{"custom_id":"fat-%d","input":"%s"}\n' % (number, b"x" * 500_000)


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        # Found after many parts were stored:
        (lambda: _big_file(BIG_LINES + 1), 422, "INVALID_INPUT"),
        # ~40 MB, chunked: no length to refuse it up front.
        (lambda: _fat_file(80), 413, "PAYLOAD_TOO_LARGE"),
    ],
    ids=["too-many-lines", "too-large"],
)
def test_a_file_refused_midway_leaves_no_batch(
    big_env: BigEnv, content: Callable[[], Iterator[bytes]], status: int, code: str
) -> None:
    before = asyncio.run(_counts(big_env.database_url))
    response = _post_big(big_env, content())
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert asyncio.run(_counts(big_env.database_url)) == before
    ok = _post_big(big_env, _big_file(3))
    assert ok.status_code == 202, ok.text
    assert big_env.client.get("/healthz").status_code == 200


async def _counts(url: str) -> tuple[int, int]:
    """Batches and jobs in the database."""
    engines = create_engines(url)
    try:
        async with engines.read.connect() as conn:
            found = [
                (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                for table in (batches, jobs)
            ]
    finally:
        await engines.dispose()
    return found[0], found[1]


def test_a_form_file_is_read_from_its_spooled_file(big_env: BigEnv) -> None:
    content = b"".join(_big_file(30_000))  # several MiB: spooled to disk by the form parser
    response = big_env.client.post(
        "/v1/batches", data={"model": "digits"}, files={"file": ("rows.jsonl", content)}
    )
    assert response.status_code == 202, response.text
    assert response.json()["counts"]["total"] == 30_000
    no_file = big_env.client.post(
        "/v1/batches", data={"model": "digits"}, files={"other": ("x", b"y")}
    )
    assert no_file.status_code == 422
    assert no_file.json()["code"] == "INVALID_INPUT"
    assert big_env.client.get("/healthz").status_code == 200
