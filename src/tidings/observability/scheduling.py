"""The scheduler process's own metrics: how many ticks it fired and how late (fire time minus due
time, by the database's clock)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from tidings.observability.histogram import DELAY_BOUNDS, Histogram, histogram_family


class SchedulerMetrics:
    """Counted by one scheduler in process; a prometheus_client collector read on scrape."""

    def __init__(self) -> None:
        self.fires = 0
        self.lateness = Histogram(DELAY_BOUNDS)

    def fired(self, lateness_s: float) -> None:
        """One tick of a schedule fired ``lateness_s`` after it was due."""
        self.fires += 1
        self.lateness.observe(lateness_s)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("tidings_scheduler_fires",
                                  "Schedule ticks this scheduler fired.", value=self.fires)
        yield histogram_family(
            "tidings_scheduler_lateness_seconds",
            "How late each tick fired: fire time minus due time, by the database's clock.",
            [], [((), self.lateness)])
