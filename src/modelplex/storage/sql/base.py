"""Transactions on the job database, with driver errors translated at this boundary."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.errors import StoreUnavailable
from modelplex.records import Clock
from modelplex.storage.sql.engines import Engines


class SqlBase:
    def __init__(self, engines: Engines, clock: Clock = time.time) -> None:
        self.engines = engines
        self._clock = clock

    async def close(self) -> None:
        await self.engines.dispose()

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
        try:
            yield
        except IntegrityError:
            raise  # the caller's business: a constraint, not an outage
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"job database error: {type(exc.orig).__name__}") from exc
        except PoolTimeout as exc:
            raise StoreUnavailable("job database: no connection free") from exc
        except OSError as exc:  # connection refused, network down
            raise StoreUnavailable(f"job database unreachable: {type(exc).__name__}") from exc
