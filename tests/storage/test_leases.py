"""Lease decisions by the database's clock, with workers whose own clocks are off
by far more than a lease (an hour each way), on SQLite and PostgreSQL.

The stores here read the database's real clock (no injected clock), so leases
really expire: they are one second long, and every wait is for a condition in
the store, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.records import Job, JobKind, JobStatus, NewJob
from modelplex.retry import Backoff, RetryPolicy
from modelplex.storage.sql import SqlStore
from tests.jobs.units import Parts, eventually, open_parts

pytestmark = pytest.mark.anyio

SKEW_S = 3600.0
LEASE_S = 1.0
CONFIG = WorkerConfig(
    concurrency=2,
    lease_s=LEASE_S,
    poll_s=0.05,
    drain_s=5.0,
    retry=RetryPolicy(3, Backoff(base_s=0.1, cap_s=0.1)),
)


AHEAD, BEHIND = SKEW_S, -SKEW_S


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    async with open_parts(tmp_path) as opened:
        yield opened


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[SqlStore]]:
    """Two handles on the database, with their own engines: two worker processes."""
    handles = [SqlStore.connect(database_url), SqlStore.connect(database_url)]
    try:
        yield handles
    finally:
        for handle in handles:
            await handle.close()


@contextlib.asynccontextmanager
async def working(store: SqlStore, parts: Parts, name: str, skew_s: float) -> AsyncIterator[Worker]:
    """A worker whose clock is `skew_s` off the database's."""
    worker = Worker(
        store, parts.runner, parts.blobs, CONFIG, name=name, clock=lambda: time.time() + skew_s
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def create(store: SqlStore, parts: Parts, target: str, data: dict[str, object]) -> Job:
    steps = parts.pipelines.get(target).step_names
    new = NewJob(kind=JobKind.PIPELINE, target=target, max_attempts=3, steps=steps, input=data)
    return await store.create(new)


async def finished(store: SqlStore, job_id: str) -> Job:
    async def check() -> Job | None:
        job = await store.get(job_id)
        return job if job is not None and job.status.finished else None

    found: Job = await eventually(check)
    return found


async def test_a_live_lease_is_not_taken_by_a_worker_whose_clock_is_ahead(
    parts: Parts, stores: list[SqlStore]
) -> None:
    gate, opened = parts.gate()
    job = await create(stores[0], parts, "two-steps", {"gate": gate})
    async with working(stores[0], parts, "w-behind", BEHIND):
        await eventually(lambda: _owner(stores[0], job.id, "w-behind"))
        # An hour ahead, the other worker would see the lease as long expired if
        # it judged by its own clock. Several leases long, it keeps trying.
        async with working(stores[1], parts, "w-ahead", AHEAD):
            deadline = time.monotonic() + LEASE_S * 4
            while time.monotonic() < deadline:
                current = await stores[1].get(job.id)
                assert current is not None
                assert (current.lease_owner, current.attempts) == ("w-behind", 1)
                await asyncio.sleep(0.1)
            opened.set()
            done = await finished(stores[1], job.id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert (done.attempts, done.crashes) == (1, 0)
    assert [h["worker"] for h in done.history] == ["w-behind"]


async def test_a_dead_workers_lease_expires_for_a_worker_whose_clock_is_behind(
    parts: Parts, stores: list[SqlStore]
) -> None:
    job = await create(stores[0], parts, "two-steps", {})
    [held] = await stores[0].claim("w-dead", 1, LEASE_S)  # and never heard of again
    assert held.id == job.id
    async with working(stores[1], parts, "w-behind", BEHIND):
        # An hour behind, it would wait an hour for the lease if it judged by its clock.
        done = await finished(stores[1], job.id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert (done.attempts, done.crashes, done.own_attempts) == (2, 1, 1)
    lost, ran = done.history
    assert (lost["worker"], lost["error"]["code"]) == ("w-dead", "LEASE_EXPIRED")
    assert ran["worker"] == "w-behind"


async def test_a_retry_falls_due_by_the_databases_clock(
    parts: Parts, stores: list[SqlStore]
) -> None:
    marker = parts.marker()
    job = await create(stores[0], parts, "boom", {"marker": str(marker)})
    # An hour ahead, it would put the retry an hour out if it stamped the due time.
    async with (
        working(stores[0], parts, "w-ahead", AHEAD),
        working(stores[1], parts, "w-behind", BEHIND),
    ):
        done = await finished(stores[0], job.id)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error["code"] == "STEP_FAILED"
    assert (done.attempts, done.crashes) == (3, 0)  # every retry ran, none waited an hour
    assert int(marker.read_text()) == 3


async def test_heartbeats_keep_leases_under_skewed_clocks(
    parts: Parts, stores: list[SqlStore]
) -> None:
    gates = [parts.gate() for _ in range(2)]
    jobs = [await create(stores[0], parts, "two-steps", {"gate": g}) for g, _ in gates]
    async with (
        working(stores[0], parts, "w-ahead", AHEAD),
        working(stores[1], parts, "w-behind", BEHIND),
    ):
        owners = await eventually(lambda: _owners(stores[0], [j.id for j in jobs]))
        await asyncio.sleep(LEASE_S * 3)  # several renewals; no lease may lapse meanwhile
        assert await _owners(stores[0], [j.id for j in jobs]) == owners
        for _, opened in gates:
            opened.set()
        done = [await finished(stores[0], j.id) for j in jobs]
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert [(j.attempts, j.crashes) for j in done] == [(1, 0), (1, 0)]


async def _owner(store: SqlStore, job_id: str, worker: str) -> bool:
    job = await store.get(job_id)
    return job is not None and job.lease_owner == worker and job.steps[0]["status"] == "RUNNING"


async def _owners(store: SqlStore, ids: list[str]) -> list[tuple[str, int]] | None:
    found = [await store.get(i) for i in ids]
    pairs = [(str(j.lease_owner), j.attempts) for j in found if j is not None and j.lease_owner]
    return pairs if len(pairs) == len(ids) else None
