"""Every storage contract test runs on each `Store`: in memory, SQLite and PostgreSQL.

`backend` gives a factory of handles onto one store. SQL handles have their own
engines, so two of them race as two processes would; memory handles are the
one object (a memory store is one process's). All of them read the test's
`clock`, which moves only when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelplex.storage.interface import Store
from modelplex.storage.memory import MemoryStore
from modelplex.storage.sql import SqlStore
from modelplex.storage.sql.engines import create_engines
from tests.databases import _migrate, truncate
from tests.fakeclock import FakeClock

OpenStore = Callable[[], Store]
KINDS = ("memory", "sqlite", "postgresql")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The migrated, empty database of the test's store (None: it lives in memory).
    Prepared here, outside the test's event loop, since the PostgreSQL fixture runs
    its own."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
        asyncio.run(_migrate(url))
        return url
    if request.param == "postgresql":
        pg_url: str = request.getfixturevalue("postgres_url")
        asyncio.run(truncate(pg_url))
        return pg_url
    return None


@pytest.fixture
async def backend(store_url: str | None, clock: FakeClock) -> AsyncIterator[OpenStore]:
    """`open_store()`: another handle onto the test's one store."""
    memory = MemoryStore(clock)
    handles: list[SqlStore] = []

    def open_store() -> Store:
        if store_url is None:
            return memory  # one process's store: every handle is the same object
        handle = SqlStore(create_engines(store_url), clock)  # its own engines, as a process
        handles.append(handle)
        return handle

    try:
        yield open_store
    finally:
        for handle in handles:
            await handle.close()


@pytest.fixture
def store(backend: OpenStore) -> Store:
    """One handle, for the tests that need no second."""
    return backend()
