"""The outbox hands out a job's events one at a time, in the order they happened,
on every store (see tests/storage/conftest.py)."""

from __future__ import annotations

import pytest

from modelplex.records import DeliveryStatus as S
from modelplex.records import Job, JobStatus, NewDelivery
from modelplex.storage.interface import Store
from tests.fakeclock import FakeClock
from tests.storage.conftest import OpenStore
from tests.storage.test_contract import HOOK, LEASE, claim_one, new_job

pytestmark = pytest.mark.anyio


async def finished_with(store: Store, *names: str) -> Job:
    """A job that ended with these events written in its final transition."""
    job = await store.create(new_job(callback_url=HOOK))
    claimed = await claim_one(store)
    out = [NewDelivery(name, HOOK, {"type": name}) for name in names]
    await store.transition(job.id, JobStatus.COMPLETED, lease=claimed.lease, deliveries_out=out)
    return job


async def claim_events(store: Store, owner: str) -> list[str]:
    return [d.event for d in await store.claim_deliveries(owner, 10, lease_s=LEASE)]


async def test_a_jobs_next_event_waits_until_the_one_before_is_settled(
    backend: OpenStore, clock: FakeClock
) -> None:
    first, second = backend(), backend()  # two dispatchers' handles
    job = await finished_with(first, "step.a", "step.b", "job.completed")
    other = await finished_with(first, "other.completed")
    assert sorted(await claim_events(first, "d1")) == ["other.completed", "step.a"]
    assert await claim_events(second, "d2") == []  # step.b waits for step.a, held by d1
    listed = {d.event: d for d in await first.list_deliveries(job.id)}
    pending, delivered, failed = S.PENDING, S.DELIVERED, S.FAILED
    [other_event] = await first.list_deliveries(other.id)  # another job's: not held back
    assert await first.record_delivery(other_event.id, "d1", [{}], delivered, 0)
    # step.a failed for now and is due again in a minute: step.b still waits.
    retry_at = clock() + 60
    assert await first.record_delivery(listed["step.a"].id, "d1", [{}], pending, retry_at)
    assert await claim_events(second, "d2") == []
    clock.advance(61)
    assert await claim_events(second, "d2") == ["step.a"]
    assert await second.record_delivery(listed["step.a"].id, "d2", [{}], delivered, 0)
    assert await claim_events(first, "d1") == ["step.b"]
    # Given up (a receiver's final answer) lets the next one go too.
    assert await first.record_delivery(listed["step.b"].id, "d1", [{}], failed, 0)
    assert await claim_events(second, "d2") == ["job.completed"]
    assert [d.event for d in await first.list_deliveries(job.id)] == [
        "step.a", "step.b", "job.completed"
    ]  # fmt: skip
