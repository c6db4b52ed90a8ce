"""How a read is split over the high / normal / low lanes (`consumer.lane_counts`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.lanes import lane_counts

batches = st.integers(min_value=1, max_value=10_000)
weights = st.tuples(*[st.integers(min_value=1, max_value=100)] * 3)
busy = st.tuples(st.booleans(), st.booleans(), st.booleans())


@given(batches, weights, busy)
def test_every_lane_is_asked_for_at_least_one_entry(
    batch: int, weight: tuple[int, int, int], is_busy: tuple[bool, bool, bool]
) -> None:
    assert all(count >= 1 for count in lane_counts(batch, weight, is_busy))


@given(batches, weights, busy.filter(any))
def test_busy_lanes_share_the_batch_by_weight(
    batch: int, weight: tuple[int, int, int], is_busy: tuple[bool, bool, bool]
) -> None:
    counts = lane_counts(batch, weight, is_busy)
    busy_weight = sum(w for w, b in zip(weight, is_busy, strict=True) if b)
    for count, w, b in zip(counts, weight, is_busy, strict=True):
        if b:
            assert abs(count - max(1, batch * w / busy_weight)) <= 0.5 + 1e-9
    busy_total = sum(c for c, b in zip(counts, is_busy, strict=True) if b)
    assert abs(busy_total - batch) <= sum(is_busy)


@given(batches, weights, busy)
def test_an_idle_lane_is_probed_with_its_plain_weighted_share(
    batch: int, weight: tuple[int, int, int], is_busy: tuple[bool, bool, bool]
) -> None:
    counts = lane_counts(batch, weight, is_busy)
    for count, w, b in zip(counts, weight, is_busy, strict=True):
        if not b:
            assert abs(count - max(1, batch * w / sum(weight))) <= 0.5 + 1e-9


@given(batches, weights, busy)
def test_a_read_never_exceeds_the_batch_plus_the_idle_probes(
    batch: int, weight: tuple[int, int, int], is_busy: tuple[bool, bool, bool]
) -> None:
    counts = lane_counts(batch, weight, is_busy)
    idle_weight = sum(w for w, b in zip(weight, is_busy, strict=True) if not b)
    probes = batch * idle_weight / sum(weight)
    # Rounding and the floor of one may add at most one entry per lane.
    assert sum(counts) <= batch + probes + 3


@given(batches, weights)
def test_with_every_lane_idle_the_batch_is_split_by_weight(
    batch: int, weight: tuple[int, int, int]
) -> None:
    counts = lane_counts(batch, weight, (False, False, False))
    assert abs(sum(counts) - batch) <= 3


def test_the_default_weights_give_low_a_tenth_of_an_idle_read() -> None:
    assert lane_counts(100, (6, 3, 1), (False, False, False)) == [60, 30, 10]


def test_only_busy_lanes_share_the_batch() -> None:
    assert lane_counts(100, (6, 3, 1), (True, False, True)) == [86, 30, 14]
