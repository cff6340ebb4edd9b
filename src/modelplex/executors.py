"""Thread pools by purpose, built and owned by the composition root (`modelplex.app`).

The event loop's default executor is one small pool shared by everything that
calls `asyncio.to_thread`. Shared, one kind of slow work takes the threads
another needs: slow DNS answers or model reloads stall blob reads and body
parsing, and a sync pipeline step that waits for a blob read needing a thread
of the same pool deadlocks once every thread is such a step. So each purpose
has its own named pool, bounded in threads and in the work that may wait:

    steps   sync pipeline steps (worker processes): one thread per job it runs
    blobs   the blob store's file IO
    dns     resolving callback URLs (getaddrinfo cannot be cancelled: bounded,
            and its callers wait with a timeout)
    loads   model (re)loads: a few at a time, further ones refused at once

CPU-heavy request work (JSON parsing, tensor decoding) has one pool per process,
not per composition root: `modelplex.core.offload`, built from `Pool` too.

Pool threads are daemon threads: a thread stuck in user code or in the
resolver never keeps a stopping process alive.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from modelplex.errors import ResourceExhausted
from modelplex.settings import Settings

T = TypeVar("T")

DNS_THREADS = 8
DNS_QUEUE = 64
BLOB_QUEUE = 1024

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Pool:
    """A named thread pool: at most `threads` running, at most `queue` more
    waiting (None: no bound); beyond that `submit` raises ResourceExhausted."""

    def __init__(self, name: str, threads: int, *, queue_size: int | None = None) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self.name = name
        self.threads = threads
        self._limit = None if queue_size is None else threads + queue_size
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._pending = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Work submitted and not yet finished (running or waiting)."""
        return self._pending

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} pool is closed")
            if self._limit is not None and self._pending >= self._limit:
                raise ResourceExhausted(f"the server is busy ({self.name}); retry later")
            self._pending += 1
            spawn = self._pending > self._started and self._started < self.threads
            if spawn:
                self._started += 1
        future.add_done_callback(self._dropped)
        self._work.put((future, fn, args))
        if spawn:
            name = f"modelplex-{self.name}-{self._started}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    async def run(self, fn: Callable[..., T], /, *args: Any, timeout_s: float | None = None) -> T:
        """`fn(*args)` on a pool thread. On timeout (TimeoutError) or cancellation
        work that has not started is dropped; work already running finishes on
        its thread, unobserved."""
        waiter = asyncio.wrap_future(self.submit(fn, *args))
        if timeout_s is None:
            return await waiter
        async with asyncio.timeout(timeout_s):
            return await waiter

    def _dropped(self, future: Future[Any]) -> None:
        # Cancelled before it ran: it no longer counts against the bound, even
        # while it still sits in the queue behind busy threads.
        if future.cancelled():
            with self._lock:
                self._pending -= 1

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # the caller's to see, through its future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                finally:
                    with self._lock:
                        self._pending -= 1
            del work, future, fn, args  # keep no reference to finished work's data

    def close(self) -> None:
        """Stop the threads once the work already submitted is done."""
        with self._lock:
            self._closed = True
            started = self._started
        for _ in range(started):
            self._work.put(None)


@dataclass
class Executors:
    """The pools of one process (see the module docstring)."""

    blobs: Pool
    dns: Pool
    loads: Pool
    steps: Pool | None = None
    """Only in processes that run jobs."""

    @classmethod
    def build(cls, settings: Settings, *, steps: bool = False) -> Executors:
        return cls(
            blobs=Pool("blobs", settings.blob_io_threads, queue_size=BLOB_QUEUE),
            dns=Pool("dns", DNS_THREADS, queue_size=DNS_QUEUE),
            loads=Pool("loads", settings.model_load_threads, queue_size=0),
            # One thread per job the worker runs: a job runs one sync step at a time.
            steps=Pool("steps", settings.worker_concurrency) if steps else None,
        )

    def close(self) -> None:
        for pool in (self.blobs, self.dns, self.loads, self.steps):
            if pool is not None:
                pool.close()
