"""Creating big batches: refusals one row each and paged, chunks written in bounded
transactions, and a creation that dies midway never reported as a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert

from modelplex.records import BatchStatus, JobStatus
from modelplex.storage.interface import BatchPart, Store
from modelplex.storage.sql import SqlStore
from modelplex.storage.sql.engines import create_engines
from modelplex.storage.sql.schema import batch_refusals, batches
from tests.fakeclock import FakeClock
from tests.storage.test_contract import LEASE, chunk, claim_all, new_batch, new_job

pytestmark = pytest.mark.anyio


async def test_refusals_are_stored_one_per_line_and_paged(store: Store, clock: FakeClock) -> None:
    batch = await store.create_batch(new_batch(total=2502, invalid=2500), [chunk(0)])
    assert (batch.refused, batch.failed, batch.status) == (2500, 2500, BatchStatus.PROCESSING)
    lines: list[int] = []
    while page := await store.batch_refusals(batch.id, lines[-1] if lines else 0, 700):
        lines += [r["line"] for r in page]
    assert lines == list(range(1, 2501))
    assert (await store.batch_refusals(batch.id, 41, 1))[0] == {
        "custom_id": "c42", "line": 42, "error": {"code": "INVALID"},
    }  # fmt: skip
    [job] = (await claim_all(store)).values()
    await store.transition(job.id, JobStatus.COMPLETED, lease=job.lease, batch_delta=(2, 0))
    clock.advance(10)
    await store.purge(finished_before=clock())
    assert await store.get_batch(batch.id) is None
    assert await store.batch_refusals(batch.id, 0, 10) == []


@pytest.fixture
async def sql_store(database_url: str, clock: FakeClock) -> Any:
    store = SqlStore(create_engines(database_url), clock)
    try:
        yield store
    finally:
        await store.close()


async def test_a_big_batch_is_written_in_bounded_transactions(sql_store: SqlStore) -> None:
    per_transaction: list[int] = []
    pending = [0]

    def before_execute(conn: Any, clause: Any, multiparams: Any, *_: Any) -> None:
        if isinstance(clause, Insert) and clause.table.name == "jobs":
            pending[0] += len(multiparams) if isinstance(multiparams, list) else 1

    def on_commit(conn: Any) -> None:
        per_transaction.append(pending[0])
        pending[0] = 0

    engine = sql_store.engines.write.sync_engine
    event.listen(engine, "before_execute", before_execute)
    event.listen(engine, "commit", on_commit)
    try:
        batch = await sql_store.create_batch(new_batch(total=1000), [chunk(i) for i in range(950)])
    finally:
        event.remove(engine, "before_execute", before_execute)
        event.remove(engine, "commit", on_commit)
    assert sum(per_transaction) == 950
    assert max(per_transaction) == 100
    assert len([n for n in per_transaction if n]) == 10
    assert batch.status is BatchStatus.PROCESSING
    chunks = await sql_store.batch_chunks(batch.id, -1, 1000)
    assert [c.chunk_index for c in chunks] == list(range(950))
    assert len(await sql_store.claim("w1", 1000, lease_s=LEASE)) == 950


async def test_a_creator_that_dies_midway_leaves_no_batch_to_report(
    sql_store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def dies(batch_id: str) -> None:
        raise SystemExit("the creating process is gone")

    async def no_cleanup(batch_ids: list[str]) -> list[Any]:
        return []  # a killed process runs no handler

    monkeypatch.setattr(sql_store, "_seal", dies)
    monkeypatch.setattr(sql_store, "_delete_batches", no_cleanup)
    with pytest.raises(SystemExit):
        await sql_store.create_batch(
            new_batch(total=250, invalid=5), [chunk(i) for i in range(245)]
        )
    monkeypatch.undo()
    chunk_jobs = await sql_store.list_jobs(limit=500)
    assert len(chunk_jobs) == 245
    batch_id = chunk_jobs[0].batch_id
    assert batch_id is not None
    creating = await sql_store.get_batch(batch_id)
    assert creating is not None
    assert creating.status is BatchStatus.CREATING
    assert await sql_store.claim("w1", 500, lease_s=LEASE) == []  # no chunk runs before the seal
    assert await sql_store.list_batches() == []  # nobody was told its id: not listed
    assert await sql_store.cancel_batch(batch_id) == creating  # nothing to cancel yet
    assert await sql_store.purge_abandoned_batches(created_before=clock()) == []  # not stale yet
    clock.advance(1)
    removed = await sql_store.purge_abandoned_batches(created_before=clock())
    assert sorted(j.id for j in removed) == sorted(j.id for j in chunk_jobs)
    assert await sql_store.get_batch(batch_id) is None
    assert await sql_store.batch_refusals(batch_id, 0, 10) == []
    assert await sql_store.list_jobs(limit=500) == []


async def test_a_creation_that_fails_midway_is_undone(sql_store: SqlStore) -> None:
    existing = await sql_store.create(new_job(idempotency_key="taken"))
    chunks = [chunk(i) for i in range(150)]
    chunks[120].idempotency_key = "taken"  # the second transaction of chunks fails
    with pytest.raises(IntegrityError):
        await sql_store.create_batch(new_batch(total=152, invalid=2), chunks)
    assert [j.id for j in await sql_store.list_jobs(limit=500)] == [existing.id]
    async with sql_store.engines.read.begin() as conn:
        assert (await conn.execute(select(func.count()).select_from(batches))).scalar() == 0
        assert (await conn.execute(select(func.count()).select_from(batch_refusals))).scalar() == 0


async def test_a_batch_created_from_parts(store: Store) -> None:
    async def parts() -> AsyncIterator[BatchPart]:
        yield BatchPart(new_batch(total=2, invalid=2).invalid_lines, [chunk(0), chunk(1)], 5)
        yield BatchPart([], [], 0)
        yield BatchPart([], [chunk(2)], 1)

    batch = await store.create_batch_from(new_batch(total=99, invalid=7), parts())
    assert (batch.total, batch.refused, batch.failed, batch.chunks) == (8, 2, 2, 3)
    assert batch.status is BatchStatus.PROCESSING
    chunks = await store.batch_chunks(batch.id, -1, 10)
    assert [c.chunk_index for c in chunks] == [0, 1, 2]
    assert len(await store.batch_refusals(batch.id, 0, 10)) == 2


async def test_parts_that_fail_undo_the_creation(sql_store: SqlStore) -> None:
    async def parts() -> AsyncIterator[BatchPart]:
        yield BatchPart([], [chunk(i) for i in range(150)], 150)
        raise ValueError("the file was refused midway")

    with pytest.raises(ValueError, match="midway"):
        await sql_store.create_batch_from(new_batch(total=0), parts())
    assert await sql_store.list_jobs(limit=500) == []
    async with sql_store.engines.read.begin() as conn:
        assert (await conn.execute(select(func.count()).select_from(batches))).scalar() == 0
