"""The worker threads of the lean read routes (QIDO-RS, one instance, frames): their lookup,
file read and audit commit run here, off the event loop, in one hand-off per request.

A plain :class:`~concurrent.futures.ThreadPoolExecutor` driven by the event loop: a hand-off
through it costs ~80 us on this machine's 2 cores where Starlette's ``run_in_threadpool``
(anyio: capacity limiter, cancel scope) costs ~110-130 us (bench/RESULTS.md, "The hot read
path"). As with anyio, the caller's context variables go along, and a request whose client
has gone still finishes its work in the thread, audit row included (R15).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

MAX_THREADS = 40
"""As many as anyio's default limiter lets Starlette's sync routes use."""

_POOL = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="dicomweb-read")


async def run_in_worker(work: Callable[[], T]) -> T:
    """``work()`` in a worker thread; its result or its exception."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_POOL, context.run, work)
