"""Latency histograms: bucketing, adding, and percentile estimates (property-based)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.analytics import histogram
from tidings.analytics.histogram import BOUNDS, SIZE, add, bucket_of, percentile

latencies = st.lists(st.floats(min_value=0, max_value=10_000_000, allow_nan=False),
                     min_size=1, max_size=300)
quantiles = st.floats(min_value=0.001, max_value=1.0)


def _histogram(values: list[float]) -> list[int]:
    counts = [0] * SIZE
    for value in values:
        counts[bucket_of(value)] += 1
    return counts


def _bucket_range(i: int, max_ms: float) -> tuple[float, float]:
    lower = 0.0 if i == 0 else float(BOUNDS[i - 1])
    upper = float(BOUNDS[i]) if i < len(BOUNDS) else max(max_ms, lower)
    return lower, min(upper, max(max_ms, lower))


@pytest.mark.parametrize(("latency", "bucket"), [
    (0, 0), (4.99, 0), (5, 1), (120, 5), (250, 6), (3_600_000, SIZE - 1), (1e9, SIZE - 1),
])
def test_a_latency_falls_in_the_bucket_its_bounds_say(latency: float, bucket: int) -> None:
    assert bucket_of(latency) == bucket


@given(latencies, quantiles)
def test_the_estimate_lies_in_the_bucket_of_the_true_nearest_rank_value(
    values: list[float], q: float
) -> None:
    ranked = sorted(values)
    true = ranked[max(1, math.ceil(q * len(ranked))) - 1]

    estimate = percentile(_histogram(values), q, max(values))

    assert estimate is not None
    lower, upper = _bucket_range(bucket_of(true), max(values))
    assert lower <= estimate <= upper
    assert estimate <= max(values)


@given(latencies, st.lists(quantiles, min_size=2, max_size=2))
def test_a_higher_quantile_never_has_a_lower_estimate(values: list[float],
                                                      qs: list[float]) -> None:
    low, high = sorted(qs)
    counts = _histogram(values)

    lower, higher = (percentile(counts, q, max(values)) for q in (low, high))
    assert lower is not None
    assert higher is not None
    assert lower <= higher


def test_no_counts_means_no_estimate() -> None:
    assert percentile([0] * SIZE, 0.5, 0) is None
    assert percentile([], 0.99, 0) is None


def test_a_quantile_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not in"):
        percentile([1], 0, 10)


@given(st.lists(st.integers(0, 100), max_size=SIZE), st.lists(st.integers(0, 100), max_size=SIZE))
def test_adding_histograms_adds_each_bucket(a: list[int], b: list[int]) -> None:
    total = add(a, b)

    assert len(total) == histogram.SIZE
    assert sum(total) == sum(a) + sum(b)
    assert all(total[i] == (a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0)
               for i in range(SIZE))
