"""A fixed-bucket histogram kept in process, cheap enough for the hot path, exported on scrape.

Unlike prometheus_client's Histogram it holds no lock and registers nowhere: it lives next to
the counters it belongs to (an agent's stats, the pipeline's metrics) and a collector turns it
into a ``HistogramMetricFamily`` when scraped. Observing is one bisect and two additions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily

# Seconds. Handlers and provider calls: sub-millisecond to a slow HTTP call.
CALL_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0)
# Seconds. End-to-end and scheduler lateness: milliseconds to an hour of retries or outage.
DELAY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 900.0, 3600.0)
# Rows per ledger flush (the writer flushes at 500 by default).
ROW_BOUNDS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)


class Histogram:
    """Counts of observed values per bucket — ``counts[i]`` holds values ``<= bounds[i]``
    (Prometheus' ``le``) and above every bound in the last — and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must be increasing and distinct, not {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        """An independent copy (a scrape's snapshot must not move while it is rendered)."""
        other = Histogram.__new__(Histogram)
        other.bounds, other.counts, other.sum = self.bounds, list(self.counts), self.sum
        return other

    def cumulative(self) -> list[tuple[str, float]]:
        """(``le``, values at or below it) pairs ending with ``+Inf``, as Prometheus wants."""
        running = 0
        buckets = []
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            running += count
            buckets.append((repr(bound), float(running)))  # 0.005, 1.0: prometheus_client's way
        buckets.append(("+Inf", float(running + self.counts[-1])))
        return buckets


def histogram_family(
    name: str, documentation: str, labels: Sequence[str],
    histograms: Mapping[tuple[str, ...], Histogram] | Iterable[tuple[tuple[str, ...], Histogram]],
) -> HistogramMetricFamily:
    """One metric family from histograms keyed by their label values (in ``labels``' order)."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    items = histograms.items() if isinstance(histograms, Mapping) else histograms
    for values, histogram in items:
        family.add_metric(list(values), histogram.cumulative(), histogram.sum)
    return family
