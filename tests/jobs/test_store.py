"""Contract tests of the job store, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import update

from modelplex.jobs.models import (
    DeliveryStatus,
    JobKind,
    JobStatus,
    Lease,
    NewDelivery,
    NewJob,
)
from modelplex.storage.jobstore import DuplicateKey, SqlJobStore
from modelplex.storage.schema import jobs as jobs_table

pytestmark = pytest.mark.anyio


def new_job(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "kind": JobKind.MODEL,
        "target": "digits",
        "max_attempts": 3,
        "steps": ["inference"],
        "input": {"instance": [1, 2]},
    }
    values.update(overrides)
    return NewJob(**values)


async def test_create_and_get(store: SqlJobStore) -> None:
    job = await store.create(new_job(metadata={"user": "u1"}, priority=5))
    assert job.status is JobStatus.QUEUED
    assert job.id.startswith("job_")
    fetched = await store.get(job.id)
    assert fetched is not None
    assert fetched.metadata == {"user": "u1"}
    assert fetched.priority == 5
    assert fetched.steps == [{"name": "inference", "status": "PENDING", "progress": 0.0}]
    assert await store.get("job_missing") is None


async def test_legal_transitions_through_the_state_machine(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    assert claimed.status is JobStatus.PROCESSING
    assert (claimed.attempts, claimed.lease_owner) == (1, "w1")
    requeued = await store.transition(job.id, JobStatus.QUEUED, lease=claimed.lease)
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED
    [again] = await store.claim("w1", 1, lease_s=30)
    done = await store.transition(
        job.id, JobStatus.COMPLETED, lease=again.lease, values={"result": {"ok": 1}}
    )
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"ok": 1}
    assert done.finished_at is not None
    assert done.lease_owner is None


@pytest.mark.parametrize("target", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED])
async def test_illegal_transitions_change_nothing(store: SqlJobStore, target: JobStatus) -> None:
    job = await store.create(new_job())
    # A QUEUED job cannot complete, fail or be re-queued without being claimed first.
    assert await store.transition(job.id, target) is None
    unchanged = await store.get(job.id)
    assert unchanged is not None
    assert unchanged.status is JobStatus.QUEUED


async def test_finished_jobs_are_final(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    await store.transition(job.id, JobStatus.FAILED, lease=claimed.lease)
    for target in JobStatus:
        assert await store.transition(job.id, target) is None
    assert await store.claim("w2", 1, lease_s=30) == []


async def test_two_workers_racing_for_one_job_exactly_one_wins(database_url: str) -> None:
    from modelplex.storage.database import create_engines

    engines = [create_engines(database_url) for _ in range(2)]
    stores = [SqlJobStore(e) for e in engines]
    try:
        for round_ in range(10):
            job = await stores[0].create(new_job(metadata={"round": round_}))
            results = await asyncio.gather(*(s.claim(f"w{i}", 5, 30) for i, s in enumerate(stores)))
            winners = [r for r in results if r]
            assert len(winners) == 1
            assert [j.id for j in winners[0]] == [job.id]
            await stores[0].transition(job.id, JobStatus.COMPLETED, lease=winners[0][0].lease)
    finally:
        for engine in engines:
            await engine.dispose()


async def test_only_the_lease_holder_writes_the_outcome(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    stale = Lease("w1", claimed.attempts - 1)
    other = Lease("w2", claimed.attempts)
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=stale) is None
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=other) is None
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease) is not None


async def test_expired_lease_is_claimed_again_and_the_old_holder_is_locked_out(
    store: SqlJobStore,
) -> None:
    job = await store.create(new_job())
    [first] = await store.claim("w1", 1, lease_s=0.2)
    assert await store.claim("w2", 1, lease_s=30) == []  # still leased
    await asyncio.sleep(0.3)
    [second] = await store.claim("w2", 1, lease_s=30)
    assert second.id == job.id
    assert second.attempts == 2
    assert second.previous_owner == "w1"
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=first.lease) is None
    done = await store.transition(job.id, JobStatus.COMPLETED, lease=second.lease)
    assert done is not None
    assert done.status is JobStatus.COMPLETED


async def test_heartbeat_extends_only_held_leases_and_reports_cancels(store: SqlJobStore) -> None:
    a = await store.create(new_job())
    b = await store.create(new_job())
    claimed = await store.claim("w1", 2, lease_s=0.5)
    assert {j.id for j in claimed} == {a.id, b.id}
    await store.request_cancel(b.id)
    held = await store.heartbeat("w1", [a.id, b.id], lease_s=30)
    assert held == {a.id: False, b.id: True}
    assert await store.heartbeat("w2", [a.id], lease_s=30) == {}
    await asyncio.sleep(0.6)
    assert await store.claim("w2", 2, lease_s=30) == []  # the heartbeat kept both


async def test_priority_then_age(store: SqlJobStore) -> None:
    low = await store.create(new_job(priority=-1))
    normal = await store.create(new_job())
    high = await store.create(new_job(priority=10))
    claimed = await store.claim("w1", 3, lease_s=30)
    assert [j.id for j in claimed] == [high.id, normal.id, low.id]


async def test_retry_waits_for_run_at(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, values={"run_at": time.time() + 0.3}
    )
    assert await store.claim("w1", 1, lease_s=30) == []
    await asyncio.sleep(0.35)
    assert [j.id for j in await store.claim("w1", 1, lease_s=30)] == [job.id]


async def test_idempotency_key_is_unique(store: SqlJobStore) -> None:
    first = await store.create(new_job(idempotency_key="k1", request_hash="h"))
    with pytest.raises(DuplicateKey) as raised:
        await store.create(new_job(idempotency_key="k1", request_hash="h"))
    assert raised.value.existing.id == first.id


async def test_cancel_queued_at_once_and_running_by_flag(store: SqlJobStore) -> None:
    queued = await store.create(new_job())
    running = await store.create(new_job())
    cancelled = await store.request_cancel(queued.id)
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    [claimed] = await store.claim("w1", 1, lease_s=30)
    assert claimed.id == running.id
    flagged = await store.request_cancel(running.id)
    assert flagged is not None
    assert flagged.status is JobStatus.PROCESSING
    assert flagged.cancel_requested is True


async def test_outbox_deliveries_are_written_with_the_transition(store: SqlJobStore) -> None:
    job = await store.create(new_job(callback_url="http://example.com/hook"))
    [claimed] = await store.claim("w1", 1, lease_s=30)
    event = NewDelivery("job.completed", "http://example.com/hook", {"type": "job.completed"})
    stale = Lease("w9", 1)
    assert (
        await store.transition(job.id, JobStatus.COMPLETED, lease=stale, deliveries_out=[event])
        is None
    )
    assert await store.list_deliveries(job.id) == []  # no event for a change that did not happen
    await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease, deliveries_out=[event])
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.status is DeliveryStatus.PENDING
    [due] = await store.claim_deliveries("d1", 10, lease_s=30)
    assert due.id == delivery.id
    assert await store.claim_deliveries("d2", 10, lease_s=30) == []  # leased to d1
    attempt = {"attempt": 1, "status_code": 200}
    assert (
        await store.record_delivery(due.id, "d2", [attempt], DeliveryStatus.DELIVERED, 0) is False
    )
    assert await store.record_delivery(due.id, "d1", [attempt], DeliveryStatus.DELIVERED, 0) is True
    [recorded] = await store.list_deliveries(job.id)
    assert recorded.status is DeliveryStatus.DELIVERED
    assert recorded.attempts == [attempt]


async def test_purge_removes_only_old_finished_jobs(store: SqlJobStore) -> None:
    old = await store.create(new_job())
    fresh = await store.create(new_job())
    queued = await store.create(new_job())
    for job in (old, fresh):
        await store.request_cancel(job.id)
    async with store.engines.write.begin() as conn:
        await conn.execute(
            update(jobs_table).where(jobs_table.c.id == old.id).values(finished_at=1.0)
        )
    removed = await store.purge(finished_before=time.time() - 60)
    assert [j.id for j in removed] == [old.id]
    assert await store.get(old.id) is None
    assert await store.get(fresh.id) is not None
    assert await store.get(queued.id) is not None


async def test_list_newest_first_with_cursor_and_filters(store: SqlJobStore) -> None:
    created = [await store.create(new_job(target="digits" if i % 2 else "other")) for i in range(5)]
    page = await store.list_jobs(limit=2)
    assert [j.id for j in page] == [created[4].id, created[3].id]
    rest = await store.list_jobs(limit=10, before=page[-1].id)
    assert [j.id for j in rest] == [c.id for c in reversed(created[:3])]
    digits = await store.list_jobs(target="digits", limit=10)
    assert {j.id for j in digits} == {created[1].id, created[3].id}
    assert await store.list_jobs(status=JobStatus.COMPLETED, limit=10) == []


async def test_a_cancel_beats_a_retry(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    flagged = await store.request_cancel(job.id)
    assert flagged is not None
    assert flagged.cancel_requested is True
    # The worker's attempt failed and would be retried: the cancel wins.
    retry = await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, unless_cancelled=True
    )
    assert retry is None
    cancelled = await store.transition(job.id, JobStatus.CANCELLED, lease=claimed.lease)
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED


async def test_requeue_clears_the_lease_and_is_not_reported_as_lost(store: SqlJobStore) -> None:
    job = await store.create(new_job())
    [claimed] = await store.claim("w1", 1, lease_s=30)
    requeued = await store.transition(job.id, JobStatus.QUEUED, lease=claimed.lease)
    assert requeued is not None
    assert requeued.lease_owner is None
    [again] = await store.claim("w2", 1, lease_s=30)
    assert again.previous_owner is None  # a retry, not a dead worker


async def test_a_group_of_transitions_keeps_each_guard(store: SqlJobStore) -> None:
    created = [await store.create(new_job()) for _ in range(6)]
    claimed = {j.id: j for j in await store.claim("w1", 6, lease_s=30)}
    stale = Lease("w1", 99)
    results = await asyncio.gather(
        *(
            store.transition(
                j.id, JobStatus.COMPLETED, lease=claimed[j.id].lease if i % 2 else stale
            )
            for i, j in enumerate(created)
        )
    )
    assert [r is not None for r in results] == [False, True, False, True, False, True]
