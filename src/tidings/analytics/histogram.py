"""Latency histograms with fixed bucket bounds: which bucket a latency falls in, how two add
up, and percentiles estimated from the counts."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from tidings.tables.analytics import LATENCY_BOUNDS_MS

BOUNDS: tuple[int, ...] = LATENCY_BOUNDS_MS
SIZE = len(BOUNDS) + 1  # the last bucket is open above


def bucket_of(latency_ms: float) -> int:
    """The bucket counting ``latency_ms``: how many bounds are <= it (SQL's width_bucket)."""
    return bisect_right(BOUNDS, latency_ms)


def add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise sum; the shorter one counts as zeros beyond its end."""
    return [x + y for x, y in zip(_padded(a), _padded(b), strict=True)]


def percentile(buckets: Sequence[int], q: float, max_ms: float) -> float | None:
    """Estimate the ``q`` quantile (0 < q <= 1) from bucket counts; None without counts.

    The nearest-rank value lies in the bucket found; inside it the estimate is interpolated
    linearly, and never exceeds ``max_ms``, the largest latency seen.
    """
    if not 0 < q <= 1:
        raise ValueError(f"quantile {q} is not in (0, 1]")
    total = sum(buckets)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = 0.0 if i == 0 else float(BOUNDS[i - 1])
            upper = float(BOUNDS[i]) if i < len(BOUNDS) else max(max_ms, lower)
            upper = max(lower, min(upper, max_ms))
            # min(): floating point may land a hair above upper when rank - seen == count
            return min(upper, lower + (upper - lower) * (rank - seen) / count)
        seen += count
    raise AssertionError("unreachable: the counts add up to total")  # pragma: no cover


def _padded(counts: Sequence[int]) -> list[int]:
    return [*counts, *([0] * (SIZE - len(counts)))][:SIZE]
