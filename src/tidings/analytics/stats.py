"""The numbers of a set of deliveries: counts by outcome and a latency distribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidings.analytics import histogram
from tidings.tables.analytics import OUTCOMES

# What a delivery step ended as; 'retried' overlaps them (see tidings.analytics.rollup).
ENDINGS = tuple(o for o in OUTCOMES if o != "retried")
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class Stats:
    """Counts by outcome, with the latency (acceptance → sent) of the sent ones."""

    counts: dict[str, int] = field(default_factory=dict)
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    buckets: list[int] = field(default_factory=list)

    def add(self, outcome: str, count: int, latency_sum: float, latency_max: float,
            buckets: list[int] | None) -> None:
        """Count ``count`` more ``outcome`` rows with their latency figures."""
        self.counts[outcome] = self.counts.get(outcome, 0) + count
        self.latency_ms_sum += latency_sum
        self.latency_ms_max = max(self.latency_ms_max, latency_max)
        if buckets:
            self.buckets = histogram.add(self.buckets, buckets)

    def count(self, outcome: str) -> int:
        """How many ended as ``outcome`` (or were retried, for 'retried')."""
        return self.counts.get(outcome, 0)

    @property
    def total(self) -> int:
        """Every counted step: sent + failed + filtered + delayed + dead (not retried)."""
        return sum(self.count(o) for o in ENDINGS)

    @property
    def success_rate(self) -> float | None:
        """Share of send attempts that were accepted by a provider: sent / (sent + failed)."""
        tried = self.count("sent") + self.count("failed")
        return self.count("sent") / tried if tried else None

    @property
    def latency_ms_mean(self) -> float | None:
        """Mean acceptance → sent latency."""
        sent = self.count("sent")
        return self.latency_ms_sum / sent if sent else None

    def latency_ms(self, q: float) -> float | None:
        """Estimated latency quantile ``q`` from the histogram (None with nothing sent)."""
        return histogram.percentile(self.buckets, q, self.latency_ms_max)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        latency = {f"p{round(q * 100)}": self.latency_ms(q) for q in QUANTILES}
        return {
            **{o: self.count(o) for o in OUTCOMES},
            "total": self.total,
            "success_rate": self.success_rate,
            "latency_ms": {"mean": self.latency_ms_mean, "max": self.latency_ms_max, **latency},
            "latency_ms_buckets": {
                "bounds": list(histogram.BOUNDS),
                "counts": histogram.add(self.buckets, []),
            },
        }


def change(current: float, previous: float) -> float | None:
    """Relative change of ``current`` against ``previous`` (None when previous is 0)."""
    return (current - previous) / previous if previous else None
