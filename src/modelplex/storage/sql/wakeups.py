"""Waking idle workers when a job becomes claimable, instead of polling.

In one process, a submission (or a retry, or a job handed back) sets the events
of every subscriber. On PostgreSQL the writing transaction also sends
`NOTIFY modelplex_jobs` (delivered at commit, so never for a change that did
not happen), and each store that has a subscriber LISTENs on a dedicated
connection, so workers in other processes and on other hosts wake too. A lost
listener connection is opened again with backoff, and everyone is woken then
(notifications sent meanwhile are gone); workers still poll slowly, so a
missed wake-up delays a job by at most `job_poll_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.retry import Backoff

log = logging.getLogger(__name__)

CHANNEL = "modelplex_jobs"
NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
_RECONNECT = Backoff(base_s=1.0, cap_s=30.0)


class Wakeups:
    def __init__(self, url: URL, *, connect_timeout_s: float) -> None:
        """`url`: the job database (LISTEN is used only when it is PostgreSQL)."""
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._events: list[asyncio.Event] = []
        self._listener: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        """Whether other processes' changes wake this one's subscribers."""
        return self._url.get_backend_name() == "postgresql"

    def subscribe(self) -> asyncio.Event:
        """An event set whenever a job may have become claimable; its waiter clears it
        before it claims (so a wake-up during the claim is not lost)."""
        event = asyncio.Event()
        self._events.append(event)
        if self.shared and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="job-wakeups")
        return event

    def signal(self) -> None:
        for event in self._events:
            event.set()

    async def notify(self, conn: AsyncConnection) -> None:
        """Inside a writing transaction: wake other processes when it commits."""
        if self.shared:
            await conn.execute(NOTIFY)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        failures = 0
        while True:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                conn = await asyncpg.connect(dsn, timeout=self._connect_timeout_s)
            except (OSError, asyncpg.PostgresError) as exc:
                failures += 1
                log.warning("job wake-ups: cannot listen (%s); polling meanwhile", exc)
                await asyncio.sleep(_RECONNECT.delay(failures))
                continue
            try:
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(CHANNEL, lambda *_args: self.signal())
                failures = 0
                self.signal()  # anything submitted while nobody listened
                await lost
                log.warning("job wake-ups: listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("job wake-ups: listener failed (%s)", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), self._connect_timeout_s)
            failures += 1
            await asyncio.sleep(_RECONNECT.delay(failures))


def _resolve(future: asyncio.Future[None], *_connection: object) -> None:
    if not future.done():
        future.set_result(None)
