"""Transactions on the job database, its clock, and driver errors translated at this boundary."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import ColumnElement, Float, bindparam, literal, literal_column
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.errors import StoreUnavailable
from modelplex.records import Clock
from modelplex.storage.sql.engines import Engines
from modelplex.storage.sql.wakeups import Wakeups

log = logging.getLogger(__name__)

# Epoch seconds by the database server's clock. Every process compares leases
# and due times against this one clock, so a worker whose own clock is off
# cannot steal a live lease or keep a dead one. (SQLite's clock is its host's:
# every process that opens the file shares it.)
_DB_CLOCKS: dict[str, ColumnElement[float]] = {
    "postgresql": literal_column("extract(epoch from statement_timestamp())::float8", Float),
    "sqlite": literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float),
}
_FIXED_NOW = bindparam("w_now", type_=Float)

UNAVAILABLE = "The job database is unavailable; retry later."
"""What a client is told; the cause (driver error, host, port) goes to the log only."""


def clock_kind(dialect: str, clock: Clock | None) -> str:
    """Which clock a store reads: the database's, or (tests) an injected one."""
    return "fixed" if clock is not None else dialect


def now_sql(kind: str) -> ColumnElement[float]:
    """`now` inside a statement: the database's clock, or the injected clock's value
    passed as the `w_now` parameter (see `SqlBase._now_params`)."""
    return _FIXED_NOW if kind == "fixed" else _DB_CLOCKS[kind]


class SqlBase:
    def __init__(self, engines: Engines, clock: Clock | None = None) -> None:
        """`clock`: None reads the database server's clock (production); tests pass a
        clock that stands in for it (every handle onto one database shares it)."""
        self.engines = engines
        self._injected = clock
        self._clock_kind = clock_kind(engines.write.dialect.name, clock)
        # Stamps made in Python (batch rows): the host's clock, unless injected.
        self._clock: Clock = clock or time.time
        self._wakeups = Wakeups(engines.write.url, connect_timeout_s=engines.connect_timeout_s)

    async def close(self) -> None:
        await self._wakeups.close()
        await self.engines.dispose()

    def _now(self) -> ColumnElement[float]:
        """The time, as a value in a statement built for this call."""
        if self._injected is not None:
            return literal(self._injected(), Float)
        return _DB_CLOCKS[self._clock_kind]

    def _now_params(self) -> dict[str, Any]:
        """The parameters a statement built with `now_sql` needs."""
        return {} if self._injected is None else {"w_now": self._injected()}

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """A writing transaction."""
        async with self._translated(), self.engines.write.begin() as connection:
            yield connection

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (on SQLite, a snapshot that takes no lock)."""
        async with self._translated(), self.engines.read.begin() as connection:
            yield connection

    @staticmethod
    @asynccontextmanager
    async def _translated() -> AsyncIterator[None]:
        # Driver messages name the database's host and port: they are logged here
        # and never reach a client.
        try:
            yield
        except IntegrityError:
            raise  # the caller's business: a constraint, not an outage
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            # OSError covers refused connections and TimeoutError (a command or
            # connect timeout: a partition, a stalled server).
            log.warning("job database unavailable: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable(UNAVAILABLE) from exc
