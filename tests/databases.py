"""Test databases: a migrated SQLite file or the local PostgreSQL, empty for each test.

PostgreSQL is the local server (127.0.0.1:5432, trust auth); each session
creates its own database and drops it at the end. Set
MODELPLEX_TEST_POSTGRES_URL to use another server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from modelplex.storage.sql.engines import create_engine, migrate

PG_ADMIN = os.environ.get(
    "MODELPLEX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_DATABASE = f"modelplex_test_{os.getpid()}"
TABLES = (
    "webhook_deliveries", "batch_refusals", "jobs", "batches", "model_generations", "api_keys",
)  # fmt: skip


async def _recreate_pg_database() -> str:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        await admin.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{PG_DATABASE}"


async def _drop_pg_database() -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = asyncio.run(_recreate_pg_database())
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_drop_pg_database())


async def _migrate(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def truncate(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            if url.startswith("sqlite"):
                for table in TABLES:
                    await conn.execute(text(f"DELETE FROM {table}"))
            else:
                await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty job database of each kind."""
    if request.param == "sqlite":
        sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
        asyncio.run(_migrate(sqlite_url))
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(truncate(url))
    return url


def fresh_database(request: pytest.FixtureRequest, kind: str, tmp: Path) -> str:
    """An empty database of `kind` ("sqlite" or "postgresql") for a module's server."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(truncate(url))
    return url
