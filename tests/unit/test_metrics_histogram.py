"""The in-process fixed-bucket histogram and the pipeline's delivery metrics, as scraped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tidings.observability.deliveries import OTHER, PipelineMetrics
from tidings.observability.histogram import Histogram
from tidings.observability.scheduling import SchedulerMetrics


def registry_of(collector: PipelineMetrics | SchedulerMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_a_value_equal_to_a_bound_is_counted_in_that_bound_s_bucket() -> None:
    histogram = Histogram((0.1, 1.0))

    for value in (0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)

    assert histogram.counts == [1, 2, 1]
    assert histogram.cumulative() == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.sum == pytest.approx(8.6)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))


@given(st.lists(st.floats(min_value=0, max_value=1e6), max_size=50))
def test_the_cumulative_counts_rise_to_the_number_of_values(values: list[float]) -> None:
    histogram = Histogram((0.01, 0.1, 1.0, 10.0))
    for value in values:
        histogram.observe(value)

    counts = [count for _, count in histogram.cumulative()]

    assert counts == sorted(counts)
    assert counts[-1] == len(values) == histogram.count
    assert counts[1] == sum(1 for v in values if v <= 0.1)


def test_a_copy_does_not_move_with_the_original() -> None:
    histogram = Histogram((1.0,))
    copy = histogram.copy()

    histogram.observe(0.5)

    assert copy.count == 0
    assert histogram.count == 1


def test_deliveries_are_counted_by_channel_provider_tenant_and_outcome() -> None:
    metrics = PipelineMetrics()
    metrics.delivery("email", "smtp", "acme", "sent")
    metrics.delivery("email", "smtp", "acme", "sent")
    metrics.delivery("sms", "none", "acme", "filtered", 3)

    registry = registry_of(metrics)

    def value(**labels: str) -> float | None:
        return registry.get_sample_value("tidings_deliveries_total", labels)

    assert value(channel="email", provider="smtp", tenant="acme", outcome="sent") == 2
    assert value(channel="sms", provider="none", tenant="acme", outcome="filtered") == 3


def test_tenants_past_the_cap_are_counted_as_other() -> None:
    metrics = PipelineMetrics(max_tenants=2)
    for tenant in ("a", "b", "c", "d", "a"):
        metrics.delivery("email", "smtp", tenant, "sent")

    registry = registry_of(metrics)
    tenants = {labels["tenant"]: value for labels, value in (
        (s.labels, s.value) for f in registry.collect() for s in f.samples
        if s.name == "tidings_deliveries_total")}

    assert tenants == {"a": 2, "b": 1, OTHER: 2}


def test_a_tenant_named_other_is_not_mixed_with_the_overflow() -> None:
    metrics = PipelineMetrics(max_tenants=1)
    for tenant in ("other", "b", "c"):
        metrics.delivery("email", "smtp", tenant, "sent")

    registry = registry_of(metrics)
    assert registry.get_sample_value("tidings_deliveries_total", {
        "channel": "email", "provider": "smtp", "tenant": "other", "outcome": "sent"}) == 1
    assert registry.get_sample_value("tidings_deliveries_total", {
        "channel": "email", "provider": "smtp", "tenant": OTHER, "outcome": "sent"}) == 2


def test_latencies_are_exported_as_histograms_in_seconds() -> None:
    metrics = PipelineMetrics()
    metrics.accepted("sms", "twilio", 0.2)
    metrics.provider_call("twilio", "transient", 0.004)
    metrics.ledger_flushed(120, 0.003)

    registry = registry_of(metrics)
    get = registry.get_sample_value

    assert get("tidings_delivery_latency_seconds_bucket",
               {"channel": "sms", "provider": "twilio", "le": "0.25"}) == 1
    assert get("tidings_delivery_latency_seconds_bucket",
               {"channel": "sms", "provider": "twilio", "le": "0.1"}) == 0
    assert get("tidings_provider_call_seconds_count",
               {"provider": "twilio", "outcome": "transient"}) == 1
    assert get("tidings_ledger_flush_rows_sum", {}) == 120
    assert get("tidings_ledger_flush_rows_bucket", {"le": "250.0"}) == 1
    assert get("tidings_ledger_flush_seconds_count", {}) == 1


def test_scheduler_lateness_is_a_histogram_of_fires() -> None:
    metrics = SchedulerMetrics()
    metrics.fired(0.02)
    metrics.fired(12.0)

    registry = registry_of(metrics)

    assert registry.get_sample_value("tidings_scheduler_fires_total", {}) == 2
    assert registry.get_sample_value("tidings_scheduler_lateness_seconds_bucket",
                                     {"le": "30.0"}) == 2
    assert registry.get_sample_value("tidings_scheduler_lateness_seconds_bucket",
                                     {"le": "10.0"}) == 1


def test_a_latency_below_zero_from_clock_skew_counts_as_zero_and_the_sum_never_falls() -> None:
    metrics = PipelineMetrics()
    metrics.accepted("sms", "twilio", 0.03)
    metrics.accepted("sms", "twilio", -0.05)  # the publisher's clock ahead of the worker's

    get = registry_of(metrics).get_sample_value
    labels = {"channel": "sms", "provider": "twilio"}
    assert get("tidings_delivery_latency_seconds_sum", labels) == 0.03
    assert get("tidings_delivery_latency_seconds_count", labels) == 2
