"""Where CPU-heavy request work runs: off the event loop, always through here.

Parsing, converting and hashing a large body takes milliseconds to seconds;
on the loop it would stall every other request. One function, so the pool it
runs in (today the default executor, bounded by its thread count) can be
re-pointed in one place. (A thread does not make an orjson parse concurrent
with the loop, it holds the GIL: what may be parsed at all is bounded by
`core.jsonlimits`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

WORTH_A_THREAD_BYTES = 256 * 1024
"""Smaller bodies are handled on the loop: the hand-off would cost more than the work."""


async def cpu_bound(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(*args, **kwargs)`, on a worker thread."""
    return await asyncio.to_thread(function, *args, **kwargs)
