"""Task helpers: cancellation that survives Python 3.11's asyncio.timeout, and sibling tasks
that never outlive their caller.

On 3.11 a cancellation that arrives while an ``asyncio.timeout`` (used inside redis-py's pool)
is expiring comes out as TimeoutError. A loop that catches Exception to retry would swallow it
and never stop; such loops ask :func:`being_cancelled` before retrying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def being_cancelled() -> bool:
    """Whether the current task has a cancellation request pending."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def all_or_none(work: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` side by side; once one raises (or this is cancelled), cancel the others
    and wait for them all to end, then raise that first exception itself (asyncio.gather
    would leave the others running; a TaskGroup would wrap it in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # cancelled: so are they
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    failed = next((t for t in tasks if t in done and not t.cancelled()
                   and t.exception() is not None), None)
    if failed is None:
        failed = next((t for t in tasks if t in done and t.cancelled()), None)
    if failed is None:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:  # every exception is retrieved: none is logged as never seen
        if not task.cancelled():
            task.exception()
    if failed.cancelled():
        raise asyncio.CancelledError
    exc = failed.exception()
    assert exc is not None
    raise exc
