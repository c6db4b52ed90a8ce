"""Cancellation that survives Python 3.11's asyncio.timeout.

On 3.11 a cancellation that arrives while an ``asyncio.timeout`` (used inside redis-py's pool)
is expiring comes out as TimeoutError. A loop that catches Exception to retry would swallow it
and never stop; such loops ask :func:`being_cancelled` before retrying.
"""

from __future__ import annotations

import asyncio


def being_cancelled() -> bool:
    """Whether the current task has a cancellation request pending."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
