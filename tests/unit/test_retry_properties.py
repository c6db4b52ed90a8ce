"""Property tests: retry delays stay in bounds, grow as their strategy says; configs round-trip."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.retry import STRATEGIES, RetryPolicy, Strategy, format_seconds, parse_seconds

seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**32)
attempts = st.integers(1, 10_000) | st.integers(1, 10**30)
previous_delays = st.none() | st.floats(0, 1e12)


@st.composite
def policies(draw: st.DrawFn, strategy: st.SearchStrategy[Strategy] | None = None) -> RetryPolicy:
    base = draw(seconds)
    return RetryPolicy(
        strategy=draw(st.sampled_from(STRATEGIES) if strategy is None else strategy),
        base=base,
        factor=draw(st.floats(1, 10)),
        max_delay=draw(st.floats(base, max(base, 1e12))),
        max_attempts=draw(st.integers(1, 100)),
        deadline=draw(st.none() | seconds),
        retry_statuses=draw(st.frozensets(st.integers(100, 599), max_size=8)),
    )


def grown(policy: RetryPolicy, attempt: int) -> float:
    """``min(max_delay, base * factor ** (attempt - 1))`` the plain way (small attempts only)."""
    try:
        return min(policy.max_delay, policy.base * policy.factor ** (attempt - 1))
    except OverflowError:
        return policy.max_delay


def at_most(value: float, bound: float) -> bool:
    """``value <= bound``, allowing for the last bits of the log-space cap."""
    return value <= bound or math.isclose(value, bound, rel_tol=1e-9)


@settings(deadline=None)
@given(policies(), attempts, previous_delays, seeds)
def test_every_delay_is_between_zero_and_max_delay(
    policy: RetryPolicy, attempt: int, previous: float | None, seed: int
) -> None:
    assert 0 <= policy.backoff(attempt, previous, random.Random(seed)) <= policy.max_delay


@settings(deadline=None)
@given(policies(st.sampled_from(["fixed", "linear", "exponential"])), attempts,
       st.integers(0, 10**6))
def test_deterministic_strategies_never_shrink(
    policy: RetryPolicy, attempt: int, more: int
) -> None:
    assert policy.backoff(attempt) <= policy.backoff(attempt + more)


@settings(deadline=None)
@given(policies(st.just("exponential")), st.integers(1, 300))
def test_exponential_is_base_times_factor_to_the_attempt(policy: RetryPolicy, attempt: int) -> None:
    assert math.isclose(policy.backoff(attempt), grown(policy, attempt), rel_tol=1e-9)


@settings(deadline=None)
@given(policies(st.just("full_jitter")), st.integers(1, 300), seeds)
def test_full_jitter_is_between_zero_and_the_capped_exponential(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.backoff(attempt, rng=random.Random(seed))

    assert delay >= 0
    assert at_most(delay, grown(policy, attempt))


@settings(deadline=None)
@given(policies(st.just("equal_jitter")), st.integers(1, 300), seeds)
def test_equal_jitter_is_between_half_and_all_of_the_capped_exponential(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay, v = policy.backoff(attempt, rng=random.Random(seed)), grown(policy, attempt)

    assert at_most(v / 2, delay)
    assert at_most(delay, v)


@settings(deadline=None)
@given(policies(st.just("decorrelated_jitter")), attempts, st.floats(0, 1e12), seeds)
def test_decorrelated_jitter_is_between_base_and_three_times_the_previous_delay(
    policy: RetryPolicy, attempt: int, previous: float, seed: int
) -> None:
    high = min(policy.max_delay, 3 * previous)
    delay = policy.backoff(attempt, previous, random.Random(seed))

    if policy.base <= high:
        assert policy.base <= delay <= high
    else:
        assert delay == policy.base


@settings(deadline=None)
@given(policies(), st.integers(1, 120), seconds, previous_delays, st.none() | seconds, seeds)
def test_next_delay_gives_up_exactly_when_attempts_or_time_run_out(
    policy: RetryPolicy, attempt: int, elapsed: float, previous: float | None,
    requested: float | None, seed: int,
) -> None:
    result = policy.next_delay(attempt, elapsed=elapsed, previous=previous, requested=requested,
                               rng=random.Random(seed))

    if attempt >= policy.max_attempts:
        assert result is None
        return
    delay = (policy.backoff(attempt, previous, random.Random(seed)) if requested is None
             else min(requested, policy.max_delay))
    late = policy.deadline is not None and elapsed + delay > policy.deadline
    assert result == (None if late else delay)


@settings(deadline=None)
@given(policies())
def test_a_policy_survives_its_json_config(policy: RetryPolicy) -> None:
    config = json.loads(json.dumps(policy.to_config()))

    assert RetryPolicy.from_config(config) == policy


@settings(deadline=None)
@given(st.integers(0, 10**12))
def test_durations_of_whole_milliseconds_read_back(millis: int) -> None:
    assert parse_seconds(format_seconds(millis / 1000)) == millis / 1000


@settings(deadline=None)
@given(st.integers(0, 10**9))
def test_a_duration_string_in_a_config_means_its_seconds(whole: int) -> None:
    policy = RetryPolicy.from_config({"base": 0, "max_delay": format_seconds(whole)})

    assert policy.max_delay == whole
