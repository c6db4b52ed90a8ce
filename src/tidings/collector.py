"""Garbage-collector tuning for the long-running processes: workers, the demo, the benchmark.

A worker allocates a few dozen container objects per message. With Python's default threshold
(700 allocations) the young generation is collected every few messages, and the older
collections walk everything imported at start-up again and again. Freezing the start-up heap
(it lives as long as the process) and collecting the young generation every
``TIDINGS_GC_THRESHOLD`` allocations took the inline pipeline's drain from ≈5.8k to ≈6.9-7.2k
notifications/s (a script draining 20 000 three times, 2-core machine). Cycles are still
collected, in larger steps.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def tuned(threshold: int) -> Iterator[None]:
    """Collect every ``threshold`` allocations, with the heap so far frozen, until the block
    ends; then as before. ``threshold`` 0 leaves the collector alone."""
    if threshold <= 0:
        yield
        return
    before = gc.get_threshold()
    gc.collect()  # what is garbage now must not be frozen with the rest
    gc.freeze()
    gc.set_threshold(threshold, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
