"""The in-process tally the demo and the benchmark read."""

from __future__ import annotations

from tidings.pipelines.notifications import Tally


def test_latencies_are_kept_per_leg_and_filtered_by_acceptance_time() -> None:
    tally = Tally()
    tally.latency("email", accepted_ms=1_000, done_ms=1_012)
    tally.latency("sms", accepted_ms=2_000, done_ms=2_003)
    tally.latency("email", accepted_ms=3_000, done_ms=3_030)

    assert sorted(tally.latencies_ms()) == [3, 12, 30]
    assert sorted(tally.latencies_ms(since_ms=2_000)) == [3, 30]
    assert tally.latencies_ms(since_ms=3_001) == []


def test_the_first_leg_sent_starts_the_drain_clock_once() -> None:
    tally = Tally()
    tally.count("email", "filtered")
    assert tally.first_sent is None

    tally.count("email", "sent")
    first = tally.first_sent
    tally.count("sms", "sent")

    assert first is not None
    assert tally.first_sent == first
    assert tally.outcomes == {("email", "filtered"): 1, ("email", "sent"): 1, ("sms", "sent"): 1}
