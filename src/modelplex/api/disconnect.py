"""A client that hangs up stops its request's work.

Once a request's body has been read, the next ASGI message the server has for
it is `http.disconnect`: sent when the connection closes, or after the
response went out. (Starlette's `Request.is_disconnected()` polls for the same
message; waiting for it costs one wake-up instead of a poll at every step.)
`until_disconnected` runs the data-plane call as a task beside a watcher for
that message. On a disconnect it cancels the request's `Stop`, which
pre-processing threads check between images, and the call's task, so whatever
the core awaits is given up at once: a thread's result not yet started is
dropped, a request queued in the batcher leaves the queue without running.
The route then ends with CANCELLED, an answer nobody reads.

Two tasks per request: worth it where a request can hold a thread for long
(models with image pre-processing), not for a sub-millisecond predict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from modelplex.core.deadlines import Stop
from modelplex.errors import JobCancelled

T = TypeVar("T")

_GONE = "the client closed the connection"


async def until_disconnected(request: Request, work: Callable[[Stop], Coroutine[Any, Any, T]]) -> T:
    """`work(stop)`'s result, or JobCancelled once the client has gone (call it
    after the body has been read: the watcher takes the request's next message)."""
    stop = Stop()
    loop = asyncio.get_running_loop()
    job = loop.create_task(work(stop))
    watcher = loop.create_task(_disconnected(request.receive))

    def gone(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is None and not job.done():
            stop.cancel(_GONE)
            job.cancel()

    watcher.add_done_callback(gone)
    try:
        return await job
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if stop.cancelled and (current is None or current.cancelling() == 0):
            raise JobCancelled(_GONE) from None  # the job was cancelled, not this route
        raise
    finally:
        watcher.cancel()
        job.cancel()  # the route itself was cancelled: so is its work


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the watcher is cancelled before the response)."""
    while (await receive())["type"] != "http.disconnect":
        pass
