"""The arithmetic behind every benchmark report: rates, medians, ratios, pass / fail."""

from __future__ import annotations

import pytest

from tidings.bench.stats import Comparison, rate
from tidings.bench.transport import Counts


def comparison(raw: list[float], tidings: list[float], target: float = 0.7) -> Comparison:
    result = Comparison("send", "single send", 100, target)
    for r, t in zip(raw, tidings, strict=True):
        result.add(r, t)
    return result


def test_rate_is_items_per_second() -> None:
    assert rate(500, 0.25) == 2000.0


def test_rate_refuses_a_run_that_took_no_time() -> None:
    with pytest.raises(ValueError, match="nothing was measured"):
        rate(10, 0.0)


def test_median_of_an_odd_number_of_runs_is_the_middle_run() -> None:
    result = comparison([900.0, 100.0, 500.0], [1.0, 3.0, 2.0])
    assert result.raw_per_s == 500.0
    assert result.tidings_per_s == 2.0


def test_median_of_an_even_number_of_runs_is_the_mean_of_the_middle_two() -> None:
    assert comparison([1.0, 4.0, 2.0, 100.0], [1.0, 1.0, 1.0, 1.0]).raw_per_s == 3.0


def test_one_outlier_run_does_not_move_the_median() -> None:
    assert comparison([1000.0, 1010.0, 5.0], [1.0, 1.0, 1.0]).raw_per_s == 1000.0


def test_ratio_is_median_tidings_over_median_raw() -> None:
    result = comparison([1000.0, 2000.0, 3000.0], [800.0, 1500.0, 100.0])
    assert result.ratio == 800.0 / 2000.0


def test_a_ratio_at_the_target_passes_and_below_it_fails() -> None:
    assert comparison([1000.0], [700.0], target=0.7).passed
    assert not comparison([1000.0], [699.0], target=0.7).passed


def test_json_carries_medians_ratio_target_and_every_run() -> None:
    data = comparison([10.0, 30.0, 20.0], [5.0, 15.0, 10.0], target=0.5).to_json()
    assert data["raw_per_s"] == 20.0
    assert data["tidings_per_s"] == 10.0
    assert data["ratio"] == 0.5
    assert data["target"] == 0.5
    assert data["passed"] is True
    assert data["raw_runs_per_s"] == [10.0, 30.0, 20.0]
    assert data["tidings_runs_per_s"] == [5.0, 15.0, 10.0]


def test_count_scale_multiplies_the_defaults() -> None:
    assert Counts.from_options(0.1) == Counts(single=500, pipelined=5000, consume=5000)


def test_an_explicit_count_wins_over_the_scale() -> None:
    counts = Counts.from_options(0.1, single=7, repeats=5)
    assert (counts.single, counts.pipelined, counts.repeats) == (7, 5000, 5)
