"""Rates, medians and the raw-versus-tidings comparison every benchmark reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any


def rate(count: int, seconds: float) -> float:
    """Items per second; a run that took no measurable time is a bug in the benchmark."""
    if seconds <= 0:
        raise ValueError(f"a run of {count} items took {seconds}s: nothing was measured")
    return count / seconds


@dataclass
class Comparison:
    """One measure run several times on both sides: per-run rates, reported as medians."""

    name: str
    label: str
    count: int
    target: float
    raw_runs: list[float] = field(default_factory=list)
    tidings_runs: list[float] = field(default_factory=list)

    def add(self, raw_per_s: float, tidings_per_s: float) -> None:
        self.raw_runs.append(raw_per_s)
        self.tidings_runs.append(tidings_per_s)

    @property
    def raw_per_s(self) -> float:
        return median(self.raw_runs)

    @property
    def tidings_per_s(self) -> float:
        return median(self.tidings_runs)

    @property
    def ratio(self) -> float:
        """Median tidings rate over median raw rate: 1.0 means tidings costs nothing extra."""
        return self.tidings_per_s / self.raw_per_s

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "count": self.count,
            "raw_per_s": self.raw_per_s,
            "tidings_per_s": self.tidings_per_s,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "raw_runs_per_s": list(self.raw_runs),
            "tidings_runs_per_s": list(self.tidings_runs),
        }
