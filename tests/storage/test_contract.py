"""Contract tests of the `Store`: one suite, run on every implementation (memory,
SQLite, PostgreSQL; see conftest.py).

Time is the fake `clock`: a lease expires, or a retry falls due, when a test
advances it, never by sleeping; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

import pytest

from modelplex.records import (
    CANCELLED_BY_REQUEST,
    BatchStatus,
    DeliveryStatus,
    Job,
    JobChanges,
    JobKind,
    JobStatus,
    Lease,
    NewBatch,
    NewDelivery,
    NewJob,
)
from modelplex.storage.interface import DuplicateKey, Store
from tests.fakeclock import FakeClock
from tests.storage.conftest import OpenStore

pytestmark = pytest.mark.anyio

LEASE = 10.0
HOOK = "http://example.com/hook"
PROCESSING_ONLY = frozenset({JobStatus.PROCESSING})
QUEUED_ONLY = frozenset({JobStatus.QUEUED})


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


def chunk(index: int) -> NewJob:
    return new_job(kind=JobKind.BATCH_CHUNK, steps=["chunk"], input={"items": [index]})


def new_batch(total: int, invalid: int = 0, **overrides: Any) -> NewBatch:
    lines = [
        {"custom_id": f"c{n}", "line": n, "error": {"code": "INVALID"}}
        for n in range(1, invalid + 1)
    ]
    return NewBatch(JobKind.MODEL, "digits", None, total, lines, **overrides)


def event(name: str = "job.completed") -> NewDelivery:
    return NewDelivery(name, HOOK, {"type": name})


async def claim_one(store: Store, worker: str = "w1") -> Job:
    [job] = await store.claim(worker, 1, lease_s=LEASE)
    return job


async def claim_all(store: Store, worker: str = "w1") -> dict[str, Job]:
    return {j.id: j for j in await store.claim(worker, 100, lease_s=LEASE)}


async def get(store: Store, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


# -- creating and reading ------------------------------------------------------


async def test_create_and_get(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job(metadata={"user": "u1"}, priority=5, callback_url=HOOK))
    assert job.status is JobStatus.QUEUED
    assert job.id.startswith("job_")
    assert (job.created_at, job.run_at, job.updated_at) == (clock(), clock(), clock())
    assert (job.attempts, job.lease_owner, job.started_at, job.finished_at) == (0, None, None, None)
    assert (job.cancel_requested, job.batch_id, job.previous_owner) == (False, None, None)
    fetched = await get(store, job.id)
    assert fetched == job
    assert fetched.metadata == {"user": "u1"}
    assert fetched.priority == 5
    assert fetched.input == {"instance": [1, 2]}
    assert fetched.steps == [{"name": "inference", "status": "PENDING", "progress": 0.0}]
    assert await store.get("job_missing") is None


async def test_idempotency_key_is_unique(store: Store) -> None:
    first = await store.create(new_job(idempotency_key="k1", request_hash="h"))
    with pytest.raises(DuplicateKey) as raised:
        await store.create(new_job(idempotency_key="k1", request_hash="other"))
    assert raised.value.existing == first
    assert await store.get_by_key("k1") == first
    assert await store.get_by_key("k2") is None
    assert [j.id for j in await store.list_jobs()] == [first.id]  # the refused one left nothing


async def test_list_newest_first_with_cursor_and_filters(store: Store) -> None:
    created = [await store.create(new_job(target="digits" if i % 2 else "other")) for i in range(5)]
    page = await store.list_jobs(limit=2)
    assert [j.id for j in page] == [created[4].id, created[3].id]
    rest = await store.list_jobs(limit=10, before=page[-1].id)
    assert [j.id for j in rest] == [c.id for c in reversed(created[:3])]
    digits = await store.list_jobs(target="digits", limit=10)
    assert [j.id for j in digits] == [created[3].id, created[1].id]
    assert await store.list_jobs(status=JobStatus.COMPLETED, limit=10) == []
    claimed = await claim_all(store)
    await store.transition(created[2].id, JobStatus.COMPLETED, lease=claimed[created[2].id].lease)
    assert [j.id for j in await store.list_jobs(status=JobStatus.COMPLETED)] == [created[2].id]
    other = await store.list_jobs(status=JobStatus.PROCESSING, target="other")
    assert [j.id for j in other] == [created[4].id, created[0].id]


async def test_the_cursor_pages_through_every_job_once(store: Store) -> None:
    created = [(await store.create(new_job())).id for _ in range(7)]
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(5):  # bounded: three pages and the empty one
        page = [j.id for j in await store.list_jobs(limit=3, before=cursor)]
        pages.append(page)
        if not page:
            break
        cursor = page[-1]
    newest_first = created[::-1]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:], []]


async def test_list_by_batch(store: Store) -> None:
    await store.create(new_job())
    batch = await store.create_batch(new_batch(total=2), [chunk(0), chunk(1)])
    chunks = await store.batch_chunks(batch.id, -1, 10)
    listed = await store.list_jobs(batch_id=batch.id)
    assert [j.id for j in listed] == [chunks[1].id, chunks[0].id]


# -- the state machine and leases ----------------------------------------------


async def test_legal_transitions_through_the_state_machine(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    assert claimed.status is JobStatus.PROCESSING
    assert (claimed.attempts, claimed.lease_owner) == (1, "w1")
    assert claimed.lease_expires_at == clock() + LEASE
    assert claimed.started_at == clock()
    requeued = await store.transition(job.id, JobStatus.QUEUED, lease=claimed.lease)
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED
    assert requeued.finished_at is None
    clock.advance(5)
    again = await claim_one(store)
    assert again.attempts == 2
    assert again.started_at == claimed.started_at  # set by the first claim only
    done = await store.transition(
        job.id, JobStatus.COMPLETED, lease=again.lease, changes={"result": {"ok": 1}}
    )
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"ok": 1}
    assert done.finished_at == clock()
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert await get(store, job.id) == done


@pytest.mark.parametrize("target", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED])
async def test_illegal_transitions_change_nothing(
    store: Store, clock: FakeClock, target: JobStatus
) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    clock.advance(1)
    # A QUEUED job cannot complete, fail or be re-queued without being claimed first.
    assert await store.transition(job.id, target, deliveries_out=[event()]) is None
    assert await get(store, job.id) == job
    assert await store.list_deliveries(job.id) == []
    assert await store.transition("job_missing", JobStatus.CANCELLED) is None


async def test_finished_jobs_are_final(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    failed = await store.transition(job.id, JobStatus.FAILED, lease=claimed.lease)
    assert failed is not None
    for target in JobStatus:
        assert await store.transition(job.id, target) is None
    assert await store.claim("w2", 1, lease_s=LEASE) == []
    assert await get(store, job.id) == failed


async def test_only_the_lease_holder_writes_the_outcome(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    stale = Lease("w1", claimed.attempts - 1)
    other = Lease("w2", claimed.attempts)
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=stale) is None
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=other) is None
    assert (await get(store, job.id)).status is JobStatus.PROCESSING
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease) is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("status", "COMPLETED"),
        ("attempts", 0),
        ("lease_owner", "intruder"),
        ("finished_at", 1.0),
        ("cancel_requested", False),
        ("resutl", {"typo": True}),
    ],
)
async def test_a_transition_refuses_changes_outside_changeable(
    store: Store, key: str, value: Any
) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    before = await get(store, job.id)
    changes = cast("JobChanges", {"result": {"ok": 1}, key: value})
    with pytest.raises(ValueError, match=key):
        await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease, changes=changes)
    assert await get(store, job.id) == before


async def test_a_transition_writes_every_changeable_field(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    changes: JobChanges = {
        "steps": [{"name": "inference", "status": "FAILED", "progress": 0.5}],
        "progress": 0.5,
        "history": [{"attempt": 1, "worker": "w1", "error": {"code": "X"}}],
        "result": [1, 2, 3],
        "result_ref": "blob://result",
        "error": {"code": "X", "message": "boom", "step": "inference"},
        "run_after_s": 60.0,
    }
    requeued = await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, changes=changes
    )
    assert requeued is not None
    for name, value in changes.items():
        if name != "run_after_s":
            assert getattr(requeued, name) == value, name
    assert requeued.run_at == clock() + 60  # the delay, from the store's clock
    assert await get(store, job.id) == requeued


async def test_only_from_narrows_the_allowed_sources(store: Store) -> None:
    running = await store.create(new_job())
    claimed = await claim_one(store)
    queued = await store.create(new_job())
    lease = claimed.lease
    refused = store.transition(running.id, JobStatus.CANCELLED, lease=lease, only_from=QUEUED_ONLY)
    assert await refused is None
    assert (await get(store, running.id)).status is JobStatus.PROCESSING
    # Narrowing never widens: COMPLETED is reached only from PROCESSING.
    assert await store.transition(queued.id, JobStatus.COMPLETED, only_from=QUEUED_ONLY) is None
    assert (await get(store, queued.id)).status is JobStatus.QUEUED
    done = await store.transition(
        running.id, JobStatus.CANCELLED, lease=lease, only_from=PROCESSING_ONLY
    )
    assert done is not None
    assert done.status is JobStatus.CANCELLED


async def test_a_cancel_beats_a_retry(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    flagged = await store.request_cancel(job.id)
    assert flagged is not None
    assert flagged.cancel_requested is True
    # The worker's attempt failed and would be retried: the cancel wins.
    retry = await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, unless_cancelled=True
    )
    assert retry is None
    assert (await get(store, job.id)).status is JobStatus.PROCESSING
    cancelled = await store.transition(job.id, JobStatus.CANCELLED, lease=claimed.lease)
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED


async def test_unless_cancelled_lets_a_retry_through_when_nobody_cancelled(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    retry = await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, unless_cancelled=True
    )
    assert retry is not None
    assert retry.status is JobStatus.QUEUED


async def test_requeue_clears_the_lease_and_is_not_reported_as_lost(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    requeued = await store.transition(job.id, JobStatus.QUEUED, lease=claimed.lease)
    assert requeued is not None
    assert (requeued.lease_owner, requeued.lease_expires_at) == (None, None)
    again = await claim_one(store, "w2")
    assert again.previous_owner is None  # a retry, not a dead worker


async def test_a_group_of_transitions_keeps_each_guard(store: Store) -> None:
    created = [await store.create(new_job()) for _ in range(6)]
    claimed = await claim_all(store)
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
    statuses = [(await get(store, j.id)).status for j in created]
    assert statuses == [JobStatus.PROCESSING, JobStatus.COMPLETED] * 3


async def test_release_hands_the_job_back_without_counting_the_attempt(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    running = [{"name": "inference", "status": "RUNNING", "progress": 0.5}]
    assert await store.update_progress(claimed.lease, job.id, running, 0.5)
    clock.advance(3)
    assert await store.release(job.id, Lease("w2", claimed.attempts)) is None
    assert await store.release(job.id, Lease("w1", claimed.attempts - 1)) is None
    released = await store.release(job.id, claimed.lease)
    assert released is not None
    assert released.status is JobStatus.QUEUED
    assert released.attempts == 0
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    assert released.run_at == released.updated_at == clock()
    # It will run from the start: a queued job shows no running step.
    assert released.steps == [{"name": "inference", "status": "PENDING", "progress": 0.0}]
    assert released.progress == 0.0
    assert await get(store, job.id) == released
    assert await store.release(job.id, claimed.lease) is None  # nobody holds it now
    again = await claim_one(store, "w2")
    assert (again.attempts, again.previous_owner) == (1, None)
    assert again.started_at == claimed.started_at


# -- the queue -----------------------------------------------------------------


async def test_priority_then_age(store: Store, clock: FakeClock) -> None:
    low = await store.create(new_job(priority=-1))
    clock.advance(1)
    old = await store.create(new_job())
    clock.advance(1)
    high = await store.create(new_job(priority=10))
    clock.advance(1)
    young = await store.create(new_job())
    first = await store.claim("w1", 2, lease_s=LEASE)
    assert [j.id for j in first] == [high.id, old.id]
    rest = await store.claim("w1", 10, lease_s=LEASE)
    assert [j.id for j in rest] == [young.id, low.id]


async def test_retry_waits_for_run_at(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    requeued = await store.transition(
        job.id, JobStatus.QUEUED, lease=claimed.lease, changes={"run_after_s": 30.0}
    )
    assert requeued is not None
    assert requeued.run_at == clock() + 30
    assert await store.next_due_in() == 30.0
    assert await store.claim("w1", 1, lease_s=LEASE) == []
    clock.advance(29.5)
    assert await store.claim("w1", 1, lease_s=LEASE) == []
    clock.advance(0.5)  # due exactly now: runnable
    assert [j.id for j in await store.claim("w1", 1, lease_s=LEASE)] == [job.id]


async def test_expired_lease_is_claimed_again_and_the_old_holder_is_locked_out(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job())
    first = await claim_one(store, "w1")
    clock.advance(LEASE)  # the lease ends now: not yet lost
    assert await store.claim("w2", 1, lease_s=LEASE) == []
    clock.advance(1)
    second = await claim_one(store, "w2")
    assert second.id == job.id
    assert (second.attempts, second.lease_owner, second.previous_owner) == (2, "w2", "w1")
    assert (first.crashes, second.crashes, second.own_attempts) == (0, 1, 1)  # a crash
    assert second.started_at == first.started_at
    assert (await get(store, job.id)).previous_owner is None  # only on the claim's answer
    assert await store.heartbeat("w1", {job.id: first.attempts}, lease_s=LEASE) == {}
    assert await store.transition(job.id, JobStatus.COMPLETED, lease=first.lease) is None
    done = await store.transition(job.id, JobStatus.COMPLETED, lease=second.lease)
    assert done is not None
    assert done.status is JobStatus.COMPLETED


async def test_lost_leases_are_claimed_before_queued_jobs(store: Store, clock: FakeClock) -> None:
    lost = await store.create(new_job())
    await claim_one(store, "w1")
    urgent = await store.create(new_job(priority=10))
    clock.advance(LEASE + 1)
    retaken = await claim_one(store, "w2")
    assert (retaken.id, retaken.previous_owner) == (lost.id, "w1")
    assert (await claim_one(store, "w2")).id == urgent.id
    # Lost together, claimed apart (a poison job must not take its neighbours down
    # again): one lost job per claim, then queued ones.
    clock.advance(LEASE + 1)
    fresh = await store.create(new_job())
    first = await store.claim("w3", 3, lease_s=LEASE)
    assert [(j.id, j.previous_owner) for j in first] == [(lost.id, "w2"), (fresh.id, None)]
    second = await store.claim("w4", 3, lease_s=LEASE)
    assert [(j.id, j.previous_owner) for j in second] == [(urgent.id, "w2")]


async def test_heartbeat_extends_only_held_leases_and_reports_cancels(
    store: Store, clock: FakeClock
) -> None:
    a = await store.create(new_job())
    b = await store.create(new_job())
    claimed = await store.claim("w1", 2, lease_s=LEASE)
    assert {j.id for j in claimed} == {a.id, b.id}
    await store.request_cancel(b.id)
    clock.advance(5)
    held = await store.heartbeat("w1", {a.id: 1, b.id: 1}, lease_s=LEASE)
    assert held == {a.id: False, b.id: True}
    assert await store.heartbeat("w2", {a.id: 1}, lease_s=LEASE) == {}
    assert await store.heartbeat("w1", {}, lease_s=LEASE) == {}
    clock.advance(LEASE)  # past the claim's lease; the renewed one ends now
    assert await store.claim("w2", 2, lease_s=LEASE) == []
    clock.advance(1)
    taken = await store.claim("w2", 2, lease_s=LEASE)  # one lost job per claim
    taken += await store.claim("w2", 2, lease_s=LEASE)
    assert {j.id for j in taken} == {a.id, b.id}


async def test_heartbeat_drops_finished_and_lost_jobs(store: Store, clock: FakeClock) -> None:
    done = await store.create(new_job())
    lost = await store.create(new_job())
    claimed = await claim_all(store)
    await store.transition(done.id, JobStatus.COMPLETED, lease=claimed[done.id].lease)
    clock.advance(LEASE + 1)
    await claim_one(store, "w2")
    stale = {done.id: 1, lost.id: 1, "job_missing": 1}
    assert await store.heartbeat("w1", stale, lease_s=LEASE) == {}
    assert await store.heartbeat("w2", {lost.id: 2}, lease_s=LEASE) == {lost.id: False}


async def test_a_late_heartbeat_does_not_revive_an_expired_lease(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job())
    first = await claim_one(store, "w1")
    clock.advance(LEASE + 1)  # expired; nobody has claimed it yet
    assert await store.heartbeat("w1", {job.id: first.attempts}, lease_s=LEASE) == {}
    again = await claim_one(store, "w2")
    assert (again.id, again.crashes) == (job.id, 1)


async def test_a_heartbeat_of_an_old_attempt_does_not_renew_the_new_one(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job())
    first = await claim_one(store, "w1")
    clock.advance(LEASE + 1)
    second = await claim_one(store, "w1")  # the same worker, a new attempt
    clock.advance(LEASE - 1)
    assert await store.heartbeat("w1", {job.id: first.attempts}, lease_s=LEASE) == {}
    assert (await get(store, job.id)).lease_expires_at == second.lease_expires_at
    assert await store.heartbeat("w1", {job.id: second.attempts}, lease_s=LEASE) == {job.id: False}


async def test_two_workers_racing_for_one_job_exactly_one_wins(backend: OpenStore) -> None:
    stores = [backend(), backend()]
    for round_ in range(10):
        job = await stores[0].create(new_job(metadata={"round": round_}))
        results = await asyncio.gather(*(s.claim(f"w{i}", 5, LEASE) for i, s in enumerate(stores)))
        winners = [r for r in results if r]
        assert len(winners) == 1
        assert [j.id for j in winners[0]] == [job.id]
        done = await stores[1].transition(job.id, JobStatus.COMPLETED, lease=winners[0][0].lease)
        assert done is not None


async def test_concurrent_claims_take_every_job_exactly_once(backend: OpenStore) -> None:
    stores = [backend(), backend()]
    made = await asyncio.gather(*(stores[i % 2].create(new_job()) for i in range(40)))
    claimants = [(s, f"w{i}-{k}") for i, s in enumerate(stores) for k in range(3)]
    claimed: list[Job] = []
    for _ in range(20):  # bounded: while jobs are left, every round takes some
        rounds = await asyncio.gather(*(s.claim(w, 3, lease_s=LEASE) for s, w in claimants))
        taken = [j for r in rounds for j in r]
        if not taken:
            break
        claimed += taken
    ids = [j.id for j in claimed]
    assert len(ids) == len(set(ids))  # no job twice
    assert sorted(ids) == sorted(j.id for j in made)  # every job
    for job in claimed:
        stored = await get(stores[0], job.id)
        assert (stored.lease_owner, stored.attempts) == (job.lease_owner, 1)


# -- cancelling and progress ---------------------------------------------------


async def test_request_cancel_of_a_queued_job_cancels_it_at_once(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    clock.advance(2)
    cancelled = await store.request_cancel(job.id, deliveries_out=[event("job.cancelled")])
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.cancel_requested is True
    assert cancelled.error == CANCELLED_BY_REQUEST
    assert cancelled.finished_at == cancelled.updated_at == clock()
    assert await get(store, job.id) == cancelled
    [delivery] = await store.list_deliveries(job.id)
    assert (delivery.event, delivery.status) == ("job.cancelled", DeliveryStatus.PENDING)
    assert delivery.payload == {"type": "job.cancelled"}
    assert await store.claim("w1", 1, lease_s=LEASE) == []


async def test_request_cancel_of_a_running_job_only_flags_it(store: Store) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    claimed = await claim_one(store)
    flagged = await store.request_cancel(job.id, deliveries_out=[event("job.cancelled")])
    assert flagged is not None
    assert flagged.status is JobStatus.PROCESSING
    assert (flagged.cancel_requested, flagged.lease_owner) == (True, "w1")
    assert await store.list_deliveries(job.id) == []  # no event: nothing was cancelled yet
    ended = await store.transition(job.id, JobStatus.CANCELLED, lease=claimed.lease)
    assert ended is not None
    assert ended.status is JobStatus.CANCELLED


async def test_cancels_requested_names_the_flagged_jobs(store: Store) -> None:
    running = await store.create(new_job())
    other = await store.create(new_job())
    await store.claim("w1", 2, lease_s=LEASE)
    assert await store.cancels_requested([running.id, other.id]) == set()
    await store.request_cancel(running.id)
    assert await store.cancels_requested([running.id, other.id, "job_missing"]) == {running.id}
    assert await store.cancels_requested([]) == set()


async def test_a_cancel_beats_the_result_of_a_running_job(store: Store) -> None:
    job = await store.create(new_job())
    claimed = await claim_one(store)
    await store.request_cancel(job.id)
    refused = await store.transition(
        job.id, JobStatus.COMPLETED, lease=claimed.lease, unless_cancelled=True
    )
    assert refused is None
    assert (await get(store, job.id)).status is JobStatus.PROCESSING


async def test_request_cancel_of_a_finished_job_changes_nothing(
    store: Store, clock: FakeClock
) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    claimed = await claim_one(store)
    done = await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease)
    clock.advance(1)
    assert await store.request_cancel(job.id, deliveries_out=[event("job.cancelled")]) == done
    assert await get(store, job.id) == done
    assert await store.list_deliveries(job.id) == []
    assert await store.request_cancel("job_missing") is None


async def test_update_progress_needs_the_lease(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job(steps=["a", "b"]))
    claimed = await claim_one(store)
    clock.advance(1)
    steps = [
        {"name": "a", "status": "COMPLETED", "progress": 1.0},
        {"name": "b", "status": "RUNNING", "progress": 0.5},
    ]
    assert await store.update_progress(claimed.lease, job.id, steps, 0.75, [event("job.progress")])
    stored = await get(store, job.id)
    assert (stored.steps, stored.progress, stored.updated_at) == (steps, 0.75, clock())
    assert stored.status is JobStatus.PROCESSING  # progress is not a status change
    assert len(await store.list_deliveries(job.id)) == 1
    stale = Lease("w1", claimed.attempts - 1)
    assert await store.update_progress(stale, job.id, [], 0.9) is False
    clock.advance(LEASE + 1)
    await claim_one(store, "w2")
    lost = await store.update_progress(claimed.lease, job.id, [], 1.0, [event("job.progress")])
    assert lost is False
    after = await get(store, job.id)
    assert (after.steps, after.progress) == (steps, 0.75)
    assert len(await store.list_deliveries(job.id)) == 1


# -- deliveries ----------------------------------------------------------------


async def test_outbox_deliveries_are_written_with_the_transition(store: Store) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    claimed = await claim_one(store)
    stale = Lease("w9", 1)
    events = [event("job.completed"), event("job.finished")]
    refused = await store.transition(
        job.id, JobStatus.COMPLETED, lease=stale, deliveries_out=events
    )
    assert refused is None
    assert await store.list_deliveries(job.id) == []  # no event for a change that did not happen
    await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease, deliveries_out=events)
    listed = await store.list_deliveries(job.id)
    assert [d.event for d in listed] == ["job.completed", "job.finished"]
    assert all(d.status is DeliveryStatus.PENDING and d.attempts == [] for d in listed)
    assert all(d.id.startswith("msg_") and d.job_id == job.id for d in listed)
    due = await store.claim_deliveries("d1", 10, lease_s=LEASE)
    assert [d.id for d in due] == [listed[0].id]  # the job's next event waits for it
    assert await store.claim_deliveries("d2", 10, lease_s=LEASE) == []  # leased to d1
    delivery = listed[0]
    attempt = {"attempt": 1, "status_code": 200}
    delivered = DeliveryStatus.DELIVERED
    assert await store.record_delivery(delivery.id, "d2", [attempt], delivered, 0) is False
    assert await store.record_delivery(delivery.id, "d1", [attempt], delivered, 0) is True
    recorded = (await store.list_deliveries(job.id))[0]
    assert recorded.status is DeliveryStatus.DELIVERED
    assert recorded.attempts == [attempt]
    assert await store.record_delivery("msg_missing", "d1", [], delivered, 0) is False


async def test_an_expired_delivery_lease_is_claimable_again(store: Store, clock: FakeClock) -> None:
    job = await store.create(new_job(callback_url=HOOK))
    claimed = await claim_one(store)
    await store.transition(
        job.id, JobStatus.COMPLETED, lease=claimed.lease, deliveries_out=[event()]
    )
    [first] = await store.claim_deliveries("d1", 10, lease_s=LEASE)
    clock.advance(LEASE)  # the lease ends now: still d1's
    assert await store.claim_deliveries("d2", 10, lease_s=LEASE) == []
    clock.advance(1)
    [second] = await store.claim_deliveries("d2", 10, lease_s=LEASE)
    assert second.id == first.id
    attempt = {"attempt": 1, "error": "timeout"}
    retry_at = clock() + 60
    pending = DeliveryStatus.PENDING
    assert await store.record_delivery(first.id, "d1", [attempt], pending, retry_at) is False
    assert await store.record_delivery(second.id, "d2", [attempt], pending, retry_at) is True
    # Recording released the lease: the same dispatcher cannot record again.
    assert await store.record_delivery(second.id, "d2", [attempt], pending, retry_at) is False
    assert await store.claim_deliveries("d3", 10, lease_s=LEASE) == []  # not due yet
    clock.advance(60)
    [retry] = await store.claim_deliveries("d3", 10, lease_s=LEASE)
    assert (retry.id, retry.attempts, retry.next_attempt_at) == (first.id, [attempt], retry_at)
    # Due again at once, and free at once: recording releases the lease.
    assert await store.record_delivery(retry.id, "d3", [attempt], pending, clock()) is True
    [retry] = await store.claim_deliveries("d4", 10, lease_s=LEASE)
    failed = DeliveryStatus.FAILED
    assert await store.record_delivery(retry.id, "d4", [attempt, attempt], failed, clock()) is True
    clock.advance(LEASE + 1)
    assert await store.claim_deliveries("d5", 10, lease_s=LEASE) == []  # failed for good


# -- batches -------------------------------------------------------------------


async def test_create_batch_with_its_chunks(store: Store, clock: FakeClock) -> None:
    batch = await store.create_batch(new_batch(total=7, invalid=1), [chunk(i) for i in range(3)])
    assert batch.id.startswith("batch_")
    assert batch.status is BatchStatus.PROCESSING
    assert (batch.total, batch.completed, batch.failed, batch.refused) == (7, 0, 1, 1)
    assert (batch.chunks, batch.chunks_done, batch.finished_at) == (3, 0, None)
    assert batch.created_at == clock()
    assert await store.get_batch(batch.id) == batch
    chunks = await store.batch_chunks(batch.id, -1, 10)
    assert [c.chunk_index for c in chunks] == [0, 1, 2]
    assert [c.input for c in chunks] == [{"items": [0]}, {"items": [1]}, {"items": [2]}]
    assert all(c.batch_id == batch.id and c.status is JobStatus.QUEUED for c in chunks)
    assert all(c.kind is JobKind.BATCH_CHUNK for c in chunks)
    assert [c.id for c in await store.batch_chunks(batch.id, 0, 1)] == [chunks[1].id]
    assert await store.batch_chunks(batch.id, 2, 10) == []
    assert await store.get_batch("batch_missing") is None


async def test_a_batch_with_no_chunks_is_finished_at_creation(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch(new_batch(total=2, invalid=2), [])
    assert batch.status is BatchStatus.FAILED  # every line failed
    assert batch.finished_at == clock()
    assert (batch.chunks, batch.failed, batch.refused) == (0, 2, 2)
    assert await store.batch_chunks(batch.id, -1, 10) == []
    clock.advance(1)
    assert await store.cancel_batch(batch.id) == batch  # finished: nothing to cancel


async def test_a_batch_counts_its_chunks_and_completes_at_the_last(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch(new_batch(total=5, invalid=1), [chunk(0), chunk(1)])
    first, second = (c.id for c in await store.batch_chunks(batch.id, -1, 10))
    claimed = await claim_all(store)
    done = await store.transition(
        first, JobStatus.COMPLETED, lease=claimed[first].lease, batch_delta=(2, 0)
    )
    assert done is not None
    counted = await store.get_batch(batch.id)
    assert counted is not None
    assert (counted.completed, counted.failed, counted.chunks_done) == (2, 1, 1)
    assert (counted.status, counted.finished_at) == (BatchStatus.PROCESSING, None)
    # Neither a refused transition nor a retry (not an end) counts.
    again = store.transition(
        first, JobStatus.COMPLETED, lease=claimed[first].lease, batch_delta=(9, 9)
    )
    assert await again is None
    lease = claimed[second].lease
    retry = await store.transition(second, JobStatus.QUEUED, lease=lease, batch_delta=(1, 1))
    assert retry is not None
    assert await store.get_batch(batch.id) == counted
    retried = await claim_one(store)
    clock.advance(3)
    await store.transition(second, JobStatus.FAILED, lease=retried.lease, batch_delta=(1, 1))
    final = await store.get_batch(batch.id)
    assert final is not None
    assert (final.completed, final.failed, final.chunks_done) == (3, 2, 2)
    assert (final.status, final.finished_at) == (BatchStatus.PARTIALLY_FAILED, clock())


@pytest.mark.parametrize(
    ("lines", "outcome"),
    [
        ([(1, 0), (1, 0)], BatchStatus.COMPLETED),
        ([(1, 0), (0, 1)], BatchStatus.PARTIALLY_FAILED),
        ([(0, 1), (0, 1)], BatchStatus.FAILED),
    ],
)
async def test_a_finished_batch_says_whether_its_lines_succeeded(
    store: Store, lines: list[tuple[int, int]], outcome: BatchStatus
) -> None:
    batch = await store.create_batch(new_batch(total=2), [chunk(0), chunk(1)])
    for job, delta in zip((await claim_all(store)).values(), lines, strict=True):
        await store.transition(job.id, JobStatus.COMPLETED, lease=job.lease, batch_delta=delta)
    done = await store.get_batch(batch.id)
    assert done is not None
    completed, failed = (sum(counts) for counts in zip(*lines, strict=True))
    assert (done.status, done.completed, done.failed) == (outcome, completed, failed)
    assert done.finished_at is not None


async def test_batches_are_listed_newest_first_with_a_cursor(store: Store) -> None:
    refused = await store.create_batch(new_batch(total=1, invalid=1), [])
    running = await store.create_batch(new_batch(total=1), [chunk(0)])
    other = await store.create_batch(replace(new_batch(total=1), target="other"), [chunk(0)])
    assert [b.id for b in await store.list_batches()] == [other.id, running.id, refused.id]
    page = await store.list_batches(limit=2)
    assert [b.id for b in page] == [other.id, running.id]
    assert [b.id for b in await store.list_batches(before=page[-1].id)] == [refused.id]
    failed = await store.list_batches(status=BatchStatus.FAILED)
    assert [b.id for b in failed] == [refused.id]
    assert [b.id for b in await store.list_batches(target="other")] == [other.id]
    assert await store.list_batches(status=BatchStatus.COMPLETED) == []


async def test_cancel_batch_cancels_queued_chunks_and_flags_running_ones(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch(new_batch(total=3), [chunk(i) for i in range(3)])
    running = await claim_one(store)
    clock.advance(1)
    cancelled = await store.cancel_batch(batch.id)
    assert cancelled is not None
    assert cancelled.status is BatchStatus.CANCELLED
    assert (cancelled.chunks_done, cancelled.finished_at) == (2, None)  # one chunk still runs
    assert await store.get_batch(batch.id) == cancelled
    for job in await store.batch_chunks(batch.id, -1, 10):
        if job.id == running.id:
            assert (job.status, job.cancel_requested) == (JobStatus.PROCESSING, True)
        else:
            assert (job.status, job.error) == (JobStatus.CANCELLED, CANCELLED_BY_REQUEST)
            assert job.finished_at == clock()
    held = await store.heartbeat("w1", {running.id: running.attempts}, lease_s=LEASE)
    assert held == {running.id: True}
    assert await store.claim("w2", 5, lease_s=LEASE) == []
    clock.advance(1)
    await store.transition(running.id, JobStatus.CANCELLED, lease=running.lease, batch_delta=(0, 0))
    ended = await store.get_batch(batch.id)
    assert ended is not None
    assert ended.status is BatchStatus.CANCELLED  # not COMPLETED: it stays cancelled
    assert (ended.chunks_done, ended.finished_at) == (3, clock())
    assert await store.cancel_batch("batch_missing") is None


async def test_cancelling_a_queued_chunk_counts_it_as_done(store: Store) -> None:
    batch = await store.create_batch(new_batch(total=2), [chunk(0), chunk(1)])
    first = (await store.batch_chunks(batch.id, -1, 1))[0]
    await store.request_cancel(first.id)
    counted = await store.get_batch(batch.id)
    assert counted is not None
    assert counted.status is BatchStatus.PROCESSING
    assert (counted.chunks_done, counted.completed, counted.failed) == (1, 0, 0)


# -- purging -------------------------------------------------------------------


async def test_purge_removes_only_old_finished_jobs(store: Store, clock: FakeClock) -> None:
    old = await store.create(new_job(idempotency_key="k-old", callback_url=HOOK))
    fresh = await store.create(new_job())
    running = await store.create(new_job(priority=1))
    queued = await store.create(new_job())
    await store.request_cancel(old.id, deliveries_out=[event("job.cancelled")])
    clock.advance(100)
    await store.request_cancel(fresh.id)
    assert (await claim_one(store)).id == running.id
    removed = await store.purge(finished_before=clock() - 50)
    assert [j.id for j in removed] == [old.id]
    assert removed[0].status is JobStatus.CANCELLED
    assert await store.get(old.id) is None
    assert await store.list_deliveries(old.id) == []  # its deliveries went with it
    for kept in (fresh, queued, running):
        assert await store.get(kept.id) is not None
    assert await store.purge(finished_before=clock() - 50) == []
    reused = await store.create(new_job(idempotency_key="k-old"))  # the key is free again
    assert await store.get_by_key("k-old") == reused


async def test_purge_takes_at_most_limit_jobs_a_call(store: Store, clock: FakeClock) -> None:
    for _ in range(3):
        await store.request_cancel((await store.create(new_job())).id)
    clock.advance(100)
    sizes = [len(await store.purge(finished_before=clock(), limit=2)) for _ in range(3)]
    assert sizes == [2, 1, 0]


async def test_purge_removes_finished_batches_with_their_chunks(
    store: Store, clock: FakeClock
) -> None:
    finished = await store.create_batch(new_batch(total=2), [chunk(0), chunk(1)])
    for job in (await claim_all(store)).values():
        lease, delta, out = job.lease, (1, 0), [event()]
        await store.transition(
            job.id, JobStatus.COMPLETED, lease=lease, batch_delta=delta, deliveries_out=out
        )
    done = await store.get_batch(finished.id)
    assert done is not None
    assert done.status is BatchStatus.COMPLETED
    unfinished = await store.create_batch(new_batch(total=2), [chunk(0), chunk(1)])
    open_chunks = await store.batch_chunks(unfinished.id, -1, 10)
    claimed = await claim_all(store)
    ended = open_chunks[0].id
    await store.transition(
        ended, JobStatus.COMPLETED, lease=claimed[ended].lease, batch_delta=(1, 0)
    )
    chunk_ids = [c.id for c in await store.batch_chunks(finished.id, -1, 10)]
    clock.advance(100)
    removed = await store.purge(finished_before=clock() - 50)
    assert sorted(j.id for j in removed) == sorted(chunk_ids)
    assert await store.get_batch(finished.id) is None
    for job_id in chunk_ids:
        assert await store.get(job_id) is None
        assert await store.list_deliveries(job_id) == []
    assert await store.get_batch(unfinished.id) is not None
    # A finished chunk of an unfinished batch stays with its batch.
    assert [c.id for c in await store.batch_chunks(unfinished.id, -1, 10)] == [
        c.id for c in open_chunks
    ]


# -- records are copies --------------------------------------------------------


async def test_jobs_going_in_and_out_are_copies(store: Store) -> None:
    submitted = new_job(metadata={"tags": ["a"]}, input={"rows": [[1, 2]]})
    job = await store.create(submitted)
    assert submitted.metadata is not None
    submitted.metadata["tags"].append("after-create")
    submitted.input["rows"][0].append(99)
    job.metadata = {"replaced": True}
    job.steps[0]["status"] = "HACKED"
    job.status = JobStatus.COMPLETED
    fetched = await get(store, job.id)
    assert (fetched.metadata, fetched.input) == ({"tags": ["a"]}, {"rows": [[1, 2]]})
    assert (fetched.steps[0]["status"], fetched.status) == ("PENDING", JobStatus.QUEUED)
    assert fetched.metadata is not None
    fetched.metadata["tags"].clear()
    (await store.list_jobs())[0].input["rows"].clear()
    claimed = await claim_one(store)
    claimed.steps.clear()
    claimed.lease_owner = "someone-else"
    stored = await get(store, job.id)
    assert (stored.metadata, stored.input) == ({"tags": ["a"]}, {"rows": [[1, 2]]})
    assert (len(stored.steps), stored.lease_owner) == (1, "w1")
    changes: JobChanges = {"result": {"rows": [1]}, "history": [{"attempt": 1}]}
    done = await store.transition(job.id, JobStatus.COMPLETED, lease=stored.lease, changes=changes)
    assert done is not None
    changes["result"]["rows"].append(2)
    changes["history"].append({"attempt": 2})
    done.result["rows"].append(3)
    final = await get(store, job.id)
    assert (final.result, final.history) == ({"rows": [1]}, [{"attempt": 1}])


async def test_batches_and_deliveries_going_in_and_out_are_copies(store: Store) -> None:
    submitted = new_batch(total=2, invalid=1, metadata={"m": [1]})
    batch = await store.create_batch(submitted, [chunk(0)])
    submitted.invalid_lines[0]["error"]["code"] = "CHANGED"
    submitted.invalid_lines.append({"line": 9, "error": {}})
    batch.completed = 99
    assert batch.metadata is not None
    batch.metadata["m"].append(2)
    stored = await store.get_batch(batch.id)
    assert stored is not None
    assert (stored.refused, stored.completed, stored.metadata) == (1, 0, {"m": [1]})
    (await store.batch_refusals(batch.id, 0, 10))[0]["error"].clear()
    (await store.batch_chunks(batch.id, -1, 10))[0].input.clear()
    assert await store.batch_refusals(batch.id, 0, 10) == [
        {"custom_id": "c1", "line": 1, "error": {"code": "INVALID"}}
    ]
    assert (await store.batch_chunks(batch.id, -1, 10))[0].input == {"items": [0]}
    job = await claim_one(store)
    sent = event()
    await store.transition(job.id, JobStatus.COMPLETED, lease=job.lease, deliveries_out=[sent])
    sent.payload["type"] = "changed-after-sending"
    [delivery] = await store.claim_deliveries("d1", 10, lease_s=LEASE)
    delivery.payload.clear()
    delivery.attempts.append({"attempt": 1})
    [listed] = await store.list_deliveries(job.id)
    assert (listed.payload, listed.attempts) == ({"type": "job.completed"}, [])
    listed.payload.clear()
    [relisted] = await store.list_deliveries(job.id)
    assert relisted.payload == {"type": "job.completed"}
