"""The notification pipeline's own metrics, counted in process where it records each delivery:
outcomes per channel / provider / tenant, end-to-end and provider-call latency, ledger flushes.

One :class:`PipelineMetrics` per process; it is a prometheus_client collector, read when
scraped. Counters and histograms are per process: Prometheus sums them across workers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from tidings.observability.histogram import (
    CALL_BOUNDS,
    DELAY_BOUNDS,
    ROW_BOUNDS,
    Histogram,
    histogram_family,
)

OUTCOMES = ("sent", "failed", "retried", "dead", "filtered", "delayed")
# Tenants are user-supplied strings: past this many distinct ones a process counts the rest as
# OTHER, so a flood of tenants cannot blow up the number of time series. A tenant is a key,
# which has no spaces: no tenant's own label can be taken for OTHER.
MAX_TENANTS = 100
OTHER = "(other tenants)"
NO_PROVIDER = "none"
"""The provider label of a delivery no provider was involved in (filtered, delayed, ...)."""

_DELIVERIES_HELP = (
    "Deliveries (one per channel and address) by outcome: sent, failed (one attempt),"
    " retried, dead, filtered or delayed. provider is 'none' where no provider was involved."
    f" tenant: the first {MAX_TENANTS} tenants a process sees, later ones as '{OTHER}'."
)


class PipelineMetrics:
    """Counts and latencies of the deliveries this process handled; see the module docstring."""

    def __init__(self, *, max_tenants: int = MAX_TENANTS) -> None:
        self.max_tenants = max_tenants
        self.deliveries: dict[tuple[str, str, str, str], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.provider_calls: dict[tuple[str, str], Histogram] = {}
        self.flush_rows = Histogram(ROW_BOUNDS)
        self.flush_seconds = Histogram(CALL_BOUNDS)
        self._tenants: set[str] = set()

    def tenant(self, tenant: str) -> str:
        """The tenant label: the tenant itself while fewer than ``max_tenants`` are tracked."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self.max_tenants:
            self._tenants.add(tenant)
            return tenant
        return OTHER

    def delivery(self, channel: str, provider: str, tenant: str, outcome: str,
                 n: int = 1) -> None:
        """Count ``n`` deliveries that reached ``outcome`` (one of :data:`OUTCOMES`)."""
        key = (channel, provider, self.tenant(tenant), outcome)
        self.deliveries[key] = self.deliveries.get(key, 0) + n

    def accepted(self, channel: str, provider: str, seconds: float) -> None:
        """A provider accepted a delivery ``seconds`` after its notification was accepted."""
        histogram = self.latency.get((channel, provider))
        if histogram is None:
            histogram = self.latency[(channel, provider)] = Histogram(DELAY_BOUNDS)
        # Accepted by one host's clock, sent by another's: skew can make it negative, and a
        # histogram's _sum must never go down (Prometheus would take it for a reset).
        histogram.observe(max(seconds, 0.0))

    def provider_call(self, provider: str, outcome: str, seconds: float) -> None:
        """One provider call took ``seconds`` (outcome: sent, transient or permanent)."""
        histogram = self.provider_calls.get((provider, outcome))
        if histogram is None:
            histogram = self.provider_calls[(provider, outcome)] = Histogram(CALL_BOUNDS)
        histogram.observe(seconds)

    def ledger_flushed(self, rows: int, seconds: float) -> None:
        """The ledger writer wrote ``rows`` buffered rows in one flush of ``seconds``."""
        self.flush_rows.observe(rows)
        self.flush_seconds.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        deliveries = CounterMetricFamily("tidings_deliveries", _DELIVERIES_HELP,
                                         labels=["channel", "provider", "tenant", "outcome"])
        for labels, count in sorted(self.deliveries.items()):
            deliveries.add_metric(list(labels), count)
        yield deliveries
        yield histogram_family(
            "tidings_delivery_latency_seconds",
            "From a notification's acceptance to a provider accepting one of its deliveries.",
            ["channel", "provider"], sorted(self.latency.items()))
        yield histogram_family(
            "tidings_provider_call_seconds",
            "Duration of one provider call, by outcome (sent, transient, permanent).",
            ["provider", "outcome"], sorted(self.provider_calls.items()))
        yield histogram_family("tidings_ledger_flush_rows", "Ledger rows written per flush.",
                               [], [((), self.flush_rows)])
        yield histogram_family("tidings_ledger_flush_seconds", "Duration of one ledger flush.",
                               [], [((), self.flush_seconds)])
