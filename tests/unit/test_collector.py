"""Garbage-collector tuning of worker processes: applied for the block, undone after it."""

from __future__ import annotations

import gc

from tidings import collector


def test_the_collector_is_tuned_inside_the_block_and_restored_after() -> None:
    before = gc.get_threshold()
    with collector.tuned(12_345):
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert gc.get_freeze_count() > 0, "the start-up heap is frozen"
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_threshold_of_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with collector.tuned(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
