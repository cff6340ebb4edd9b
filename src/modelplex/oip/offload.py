"""CPU-bound protocol work (decoding large tensors, encoding large answers) off the
event loop, in a small pool of its own.

The pool is small on purpose: the work holds the GIL in stretches, so more
threads would not finish it sooner, only let more of it wait in memory. The
loop keeps running between those stretches, which is what matters to other
requests; what bounds the work itself is the codec (vectorised decoding and
`max_tensor_elements`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

THREADS = 2
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="codec")


async def run_cpu(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` in the codec pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool, partial(func, *args, **kwargs))
