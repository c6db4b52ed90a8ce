"""Retry policies by example: delays of each strategy, giving up, classification, config, lookup."""

from __future__ import annotations

import random

import httpx
import pytest

from tidings.errors import ConfigurationError, Reject, Retry
from tidings.pipelines.routing import RoutingError
from tidings.retry import RetryPolicies, RetryPolicy, format_seconds, parse_seconds


def status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://provider.test/send")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


# -- delays ---------------------------------------------------------------------------------


def test_fixed_waits_base_every_time() -> None:
    policy = RetryPolicy("fixed", base=3)

    assert [policy.backoff(n) for n in (1, 2, 7)] == [3.0, 3.0, 3.0]


def test_linear_grows_by_base_each_attempt() -> None:
    policy = RetryPolicy("linear", base=1.5)

    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [1.5, 3.0, 4.5, 6.0]


def test_exponential_multiplies_by_factor() -> None:
    policy = RetryPolicy("exponential", base=0.5, factor=3)

    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_exponential_stops_at_max_delay() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=10)

    assert [policy.backoff(n) for n in (3, 4, 5, 6)] == [4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize(
    "strategy", ["linear", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"]
)
def test_a_huge_attempt_gives_at_most_max_delay_without_overflow(strategy: str) -> None:
    policy = RetryPolicy(strategy, base=1, factor=2, max_delay=60)  # type: ignore[arg-type]

    assert 0 <= policy.backoff(10_000, previous=60, rng=random.Random(1)) <= 60
    assert 0 <= policy.backoff(10**400, previous=60, rng=random.Random(1)) <= 60


def test_exponential_at_attempt_ten_thousand_is_max_delay() -> None:
    assert RetryPolicy(factor=2, max_delay=300).backoff(10_000) == 300.0


def test_a_tiny_base_grows_past_the_float_range_of_the_power_alone() -> None:
    policy = RetryPolicy(base=1e-310, factor=2, max_delay=1e10)

    assert policy.backoff(1060) == pytest.approx(1e-310 * 2.0**1000 * 2.0**59)


def test_full_jitter_draws_between_zero_and_the_exponential_delay() -> None:
    policy = RetryPolicy("full_jitter", base=1, factor=2)

    assert policy.backoff(3, rng=random.Random(7)) == random.Random(7).uniform(0, 4)


def test_equal_jitter_keeps_half_and_draws_the_other_half() -> None:
    policy = RetryPolicy("equal_jitter", base=1, factor=2)

    assert policy.backoff(3, rng=random.Random(7)) == 2 + random.Random(7).uniform(0, 2)


def test_decorrelated_jitter_draws_up_to_three_times_the_previous_delay() -> None:
    policy = RetryPolicy("decorrelated_jitter", base=1, max_delay=100)

    assert policy.backoff(5, previous=4, rng=random.Random(7)) == random.Random(7).uniform(1, 12)


def test_decorrelated_jitter_starts_from_base_without_a_previous_delay() -> None:
    policy = RetryPolicy("decorrelated_jitter", base=2, max_delay=100)

    assert policy.backoff(1, rng=random.Random(3)) == random.Random(3).uniform(2, 6)


def test_decorrelated_jitter_ignores_factor() -> None:
    slow = RetryPolicy("decorrelated_jitter", factor=1)
    fast = RetryPolicy("decorrelated_jitter", factor=10)

    assert slow.backoff(4, 5, random.Random(2)) == fast.backoff(4, 5, random.Random(2))


def test_decorrelated_jitter_never_exceeds_max_delay() -> None:
    policy = RetryPolicy("decorrelated_jitter", base=1, max_delay=5)

    assert all(policy.backoff(2, previous=5, rng=random.Random(s)) <= 5 for s in range(50))


def test_attempt_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        RetryPolicy().backoff(0)


def test_a_negative_previous_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="previous delay must be >= 0"):
        RetryPolicy("decorrelated_jitter").backoff(2, previous=-1)


# -- giving up ------------------------------------------------------------------------------


def test_next_delay_is_the_backoff_while_attempts_remain() -> None:
    assert RetryPolicy(max_attempts=3).next_delay(2, elapsed=0) == 2.0


def test_next_delay_gives_up_after_the_last_attempt() -> None:
    assert RetryPolicy(max_attempts=3).next_delay(3, elapsed=0) is None


def test_one_attempt_means_never_retry() -> None:
    assert RetryPolicy(max_attempts=1).next_delay(1, elapsed=0) is None


def test_next_delay_gives_up_when_the_retry_would_start_after_the_deadline() -> None:
    policy = RetryPolicy("fixed", base=10, deadline=60)

    assert policy.next_delay(1, elapsed=50) == 10.0
    assert policy.next_delay(1, elapsed=50.5) is None


def test_a_requested_delay_replaces_the_strategy() -> None:
    assert RetryPolicy("fixed", base=10).next_delay(1, elapsed=0, requested=2.5) == 2.5


def test_a_requested_delay_is_capped_by_max_delay() -> None:
    assert RetryPolicy(max_delay=30).next_delay(1, elapsed=0, requested=3600) == 30.0


def test_a_requested_delay_still_meets_the_deadline() -> None:
    assert RetryPolicy(deadline=20).next_delay(1, elapsed=15, requested=10) is None


def test_a_negative_requested_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="requested delay must be >= 0"):
        RetryPolicy().next_delay(1, elapsed=0, requested=-1)


# -- classification -------------------------------------------------------------------------


def test_a_reject_is_never_retried() -> None:
    assert not RetryPolicy().retryable(Reject("bad address"))


def test_a_retry_signal_is_retried() -> None:
    assert RetryPolicy().retryable(Retry(5))


def test_give_up_on_types_and_their_subclasses_are_never_retried() -> None:
    policy = RetryPolicy(give_up_on=(LookupError,))

    assert not policy.retryable(KeyError("x"))
    assert policy.retryable(ValueError("x"))


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (404, False)])
def test_http_status_errors_are_retried_by_status(status: int, retryable: bool) -> None:
    assert RetryPolicy().retryable(status_error(status)) is retryable


def test_retry_statuses_can_be_narrowed() -> None:
    policy = RetryPolicy(retry_statuses=frozenset({503}))

    assert policy.retryable_status(503)
    assert not policy.retryable_status(500)


def test_other_exceptions_are_retried() -> None:
    assert RetryPolicy().retryable(TimeoutError())


# -- configuration --------------------------------------------------------------------------


def test_an_empty_config_gives_the_defaults() -> None:
    assert RetryPolicy.from_config({}) == RetryPolicy()


def test_a_full_config_is_read() -> None:
    policy = RetryPolicy.from_config({
        "strategy": "full_jitter", "base": "500ms", "factor": 3, "max_delay": "5m",
        "max_attempts": 8, "deadline": "1d", "retry_statuses": [503, 429],
    })

    assert policy == RetryPolicy("full_jitter", 0.5, 3.0, 300.0, 8, 86_400.0,
                                 frozenset({503, 429}))


def test_durations_may_be_numbers_of_seconds() -> None:
    assert RetryPolicy.from_config({"base": 2, "max_delay": 7.5}).max_delay == 7.5


def test_a_config_round_trips() -> None:
    policy = RetryPolicy("linear", 0.25, 1.5, 90, 3, 600, frozenset({500}))

    assert RetryPolicy.from_config(policy.to_config()) == policy


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_attempts": 0}, "retry_policy.max_attempts: must be a whole number >= 1 "
                              "(1 = never retry), got 0"),
        ({"max_attempts": True}, "retry_policy.max_attempts: must be a whole number >= 1"),
        ({"max_attempts": 2.5}, "retry_policy.max_attempts: must be a whole number >= 1"),
        ({"base": -1}, "retry_policy.base: must be a finite number of seconds >= 0, got -1"),
        ({"base": "soon"}, "retry_policy.base: 'soon' is not a duration"),
        ({"base": [1]}, "retry_policy.base: must be a finite number of seconds >= 0, got [1]"),
        ({"deadline": "-5m"}, "retry_policy.deadline: '-5m' is not a duration"),
        ({"base": 10, "max_delay": 5}, "retry_policy.max_delay: must be >= base (10s), got 5.0"),
        ({"factor": 0.5}, "retry_policy.factor: must be a finite number >= 1, got 0.5"),
        ({"factor": "2"}, "retry_policy.factor: must be a finite number >= 1, got '2'"),
        ({"strategy": "random"}, "retry_policy.strategy: must be one of fixed, linear, "
                                 "exponential, full_jitter, equal_jitter, decorrelated_jitter"),
        ({"retry_statuses": 503}, "retry_policy.retry_statuses: must be a list of HTTP status"),
        ({"retry_statuses": [503, 99]}, "retry_policy.retry_statuses: must hold HTTP status "
                                        "codes from 100 to 599, got 99"),
        ({"retry_statuses": [{}]}, "retry_policy.retry_statuses: must hold HTTP status codes"),
        ({"backoff": 2}, "retry_policy.backoff: unknown key: use strategy, base, factor"),
    ],
)
def test_a_bad_config_names_the_field_and_the_reason(
    config: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RetryPolicy.from_config(config)

    assert str(raised.value).startswith(message)


def test_a_config_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="retry_policy: must be a JSON object"):
        RetryPolicy.from_config([1, 2])  # type: ignore[arg-type]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigurationError, match=r"retry_policy\.max_attempts"):
        RetryPolicy(max_attempts=0)


def test_give_up_on_must_hold_exception_classes() -> None:
    with pytest.raises(ConfigurationError, match=r"retry_policy\.give_up_on"):
        RetryPolicy(give_up_on=(int,))  # type: ignore[arg-type]


def test_numbers_are_normalised_so_equal_policies_compare_equal() -> None:
    assert RetryPolicy(base=1, max_delay=300) == RetryPolicy(base=1.0, max_delay=300.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86_400),
     ("1h30m", 5400), ("0s", 0), (" 15 M ", 900)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (86_400, "1d"), (1e-4, "0.0001s")],
)
def test_durations_format_shortly(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        (RetryPolicy(),
         "exponential from 1s \N{MULTIPLICATION SIGN}2, at most 5 attempts, ≤ 5m each"),
        (RetryPolicy("fixed", base=30, max_attempts=1), "fixed 30s, never retried, ≤ 5m each"),
        (RetryPolicy("linear", base=0.5, max_delay=60, deadline=3600),
         "linear +500ms per attempt, at most 5 attempts, ≤ 1m each, none after 1h"),
        (RetryPolicy("decorrelated_jitter"),
         "decorrelated_jitter from 1s, at most 5 attempts, ≤ 5m each"),
    ],
)
def test_describe_says_it_in_one_line(policy: RetryPolicy, line: str) -> None:
    assert policy.describe() == line


# -- resolving ------------------------------------------------------------------------------

QUEUE = RetryPolicy("fixed", base=1)
AGENT = RetryPolicy("fixed", base=2)
ORDERS = RetryPolicy("fixed", base=3)
SHIPPED = RetryPolicy("fixed", base=4)
EVERYTHING = RetryPolicy("fixed", base=5)


def policies() -> RetryPolicies:
    return RetryPolicies(by_queue={"emails": QUEUE}, by_agent={"mailer": AGENT})


def test_with_nothing_configured_the_default_applies() -> None:
    assert RetryPolicies().for_message(topic="emails", agent="mailer") == RetryPolicy()


def test_the_queue_policy_beats_the_default() -> None:
    assert policies().for_message(topic="emails", agent="other") is QUEUE


def test_the_agent_policy_beats_the_queue_policy() -> None:
    assert policies().for_message(topic="emails", agent="mailer") is AGENT


def test_an_unknown_queue_and_agent_get_the_default() -> None:
    assert policies().for_message(topic="sms", agent="texter") == RetryPolicy()


def test_a_type_policy_beats_the_agent_policy() -> None:
    resolved = RetryPolicies(by_agent={"mailer": AGENT}, by_type={"order.*": ORDERS})

    assert resolved.for_message(topic="emails", agent="mailer", type="order.paid") is ORDERS


def test_a_type_that_matches_no_pattern_falls_back_to_the_agent() -> None:
    resolved = RetryPolicies(by_agent={"mailer": AGENT}, by_type={"order.*": ORDERS})

    assert resolved.for_message(topic="emails", agent="mailer", type="user.created") is AGENT


def test_an_exact_type_beats_a_wildcard() -> None:
    resolved = RetryPolicies(by_type={"order.*": ORDERS, "order.shipped": SHIPPED})

    assert resolved.for_message(topic="t", agent="a", type="order.shipped") is SHIPPED


def test_a_longer_pattern_beats_a_shorter_one() -> None:
    resolved = RetryPolicies(by_type={"**": EVERYTHING, "order.*": ORDERS, "order.ship*": SHIPPED})

    assert resolved.for_message(topic="t", agent="a", type="order.shipped") is SHIPPED
    assert resolved.for_message(topic="t", agent="a", type="order.paid") is ORDERS
    assert resolved.for_message(topic="t", agent="a", type="user.created") is EVERYTHING


def test_a_single_star_matches_one_segment_only() -> None:
    resolved = RetryPolicies(by_type={"*": EVERYTHING})

    assert resolved.for_message(topic="t", agent="a", type="ping") is EVERYTHING
    assert resolved.for_message(topic="t", agent="a", type="order.paid") == RetryPolicy()


def test_a_malformed_type_pattern_is_refused_up_front() -> None:
    with pytest.raises(RoutingError, match="bad type pattern"):
        RetryPolicies(by_type={"Order..*": ORDERS})


def test_the_resolver_keeps_its_own_copy_of_the_mappings() -> None:
    by_agent = {"mailer": AGENT}
    resolved = RetryPolicies(by_agent=by_agent)
    by_agent["mailer"] = QUEUE

    assert resolved.for_message(topic="t", agent="mailer") is AGENT
