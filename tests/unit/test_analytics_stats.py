"""Report statistics: totals, success rate, and the retention settings read from the
environment."""

from __future__ import annotations

import pytest

from tidings.analytics.retention import Retention
from tidings.analytics.stats import Stats, change
from tidings.errors import ConfigurationError


def _stats(**counts: int) -> Stats:
    stats = Stats()
    for outcome, count in counts.items():
        stats.add(outcome, count, 0.0, 0.0, None)
    return stats


def test_the_total_counts_every_ending_but_not_retries() -> None:
    stats = _stats(sent=5, failed=3, retried=2, filtered=1, delayed=1, dead=1)

    assert stats.total == 11


def test_the_success_rate_is_sent_over_send_attempts() -> None:
    assert _stats(sent=3, failed=1, filtered=10).success_rate == 0.75
    assert _stats(filtered=2).success_rate is None


def test_the_mean_latency_is_over_sent_deliveries() -> None:
    stats = Stats()
    stats.add("sent", 4, 400.0, 250.0, [0, 4])

    assert stats.latency_ms_mean == 100
    assert stats.latency_ms_max == 250


def test_change_against_nothing_is_undefined() -> None:
    assert change(5, 0) is None
    assert change(15, 10) == 0.5


def test_retention_defaults_without_the_environment() -> None:
    assert Retention.from_env({}) == Retention(30, 7, 90, 0, 5_000)


def test_retention_reads_each_variable() -> None:
    environ = {"TIDINGS_RETENTION_LEDGER_DAYS": "14", "TIDINGS_RETENTION_MINUTE_DAYS": "1.5",
               "TIDINGS_RETENTION_HOUR_DAYS": "30", "TIDINGS_RETENTION_DAY_DAYS": "365",
               "TIDINGS_RETENTION_BATCH": "100"}

    assert Retention.from_env(environ) == Retention(14, 1.5, 30, 365, 100)


@pytest.mark.parametrize(("name", "value", "error"), [
    ("LEDGER_DAYS", "a month", "TIDINGS_RETENTION_LEDGER_DAYS='a month' is not a number"),
    ("HOUR_DAYS", "-1", "TIDINGS_RETENTION_HOUR_DAYS must be 0 (keep forever) or more"),
    ("BATCH", "0", "TIDINGS_RETENTION_BATCH must be 1 or more"),
])
def test_a_bad_retention_says_which_variable(name: str, value: str, error: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Retention.from_env({f"TIDINGS_RETENTION_{name}": value})

    assert str(raised.value) == error
