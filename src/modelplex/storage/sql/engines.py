"""Engines for the job store: SQLite (embedded default) or PostgreSQL (scale-out).

SQLite runs in WAL mode with a busy timeout, and every writing transaction
starts with BEGIN IMMEDIATE: a deferred transaction that reads and then writes
fails at once with "database is locked" when another process writes, instead
of waiting. Reads use their own connections and plain BEGIN (a snapshot).
Migrations run at start-up (`migrate`), serialised between processes by a
PostgreSQL advisory lock or SQLite's own write lock.

PostgreSQL connections have a connect timeout, a client-side command timeout
(asyncpg's `command_timeout`: a network partition fails a statement instead of
hanging every writer) and the same bound as the server's `statement_timeout`.
A timeout surfaces as `StoreUnavailable` (see `base.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_ADVISORY_LOCK = 0x6D6F64656C  # "model"


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'modelplex.db').resolve()}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


@dataclass(frozen=True)
class Engines:
    """Where writes and reads go. PostgreSQL: one engine. SQLite: one connection
    for writes (SQLite has one writer; queueing in the pool beats SQLite's
    sleeping busy handler) and a pool of snapshot readers that never take the
    write lock."""

    write: AsyncEngine
    read: AsyncEngine
    connect_timeout_s: float = 10.0

    async def dispose(self) -> None:
        await self.write.dispose()
        if self.read is not self.write:
            await self.read.dispose()


def create_engines(url: str, *, pool_size: int = 10, command_timeout_s: float = 30.0) -> Engines:
    connect_timeout_s = min(10.0, command_timeout_s)
    if not is_sqlite(url):
        engine = create_engine(url, pool_size=pool_size, command_timeout_s=command_timeout_s)
        return Engines(engine, engine, connect_timeout_s)
    return Engines(
        create_engine(url, pool_size=1),
        _sqlite_engine(url, 4, immediate=False),
        connect_timeout_s,
    )


def create_engine(url: str, *, pool_size: int = 10, command_timeout_s: float = 30.0) -> AsyncEngine:
    if is_sqlite(url):
        return _sqlite_engine(url, pool_size, immediate=True)
    # No pre-ping (a round trip per checkout): a connection the server dropped
    # fails one transaction, which SQLAlchemy answers by discarding the pool.
    connect_args = {
        "timeout": min(10.0, command_timeout_s),
        "command_timeout": command_timeout_s,
        # The server gives up too (and frees its locks); the client's bound is the
        # one that holds when the network is gone.
        "server_settings": {"statement_timeout": str(int(command_timeout_s * 1000))},
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=command_timeout_s,
        connect_args=connect_args,
    )


def _sqlite_engine(url: str, pool_size: int, *, immediate: bool) -> AsyncEngine:
    path = url.split(":///", 1)[1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        connect_args={"timeout": 30, "isolation_level": None},
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=60,
    )
    _sqlite_pragmas(engine, immediate=immediate)
    return engine


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the latest migration (safe to run from many processes)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
