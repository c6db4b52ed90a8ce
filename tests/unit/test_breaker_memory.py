"""Circuit breakers in memory: the shared behaviour suite, their settings, and failover."""

from __future__ import annotations

import logging

import pytest

from breaker_behaviour import CONFIG, BreakerBehaviour, Connect, FakeClock, open_breaker
from tidings import keys
from tidings.errors import ConfigurationError
from tidings.notification import Channel, Content, parse_notification
from tidings.sinks.base import PERMANENT, TRANSIENT, Delivery, Failure, SendResult, Stopwatch
from tidings.sinks.breaker import (
    BreakerConfig,
    BreakerState,
    MemoryBreakerStore,
    Permit,
    Transition,
)
from tidings.sinks.failover import CircuitBreakers, FailoverProvider, provider_at_fault


class TestBreakerInMemory(BreakerBehaviour):
    @pytest.fixture
    def connect(self, clock: FakeClock) -> Connect:
        store = MemoryBreakerStore(clock)
        return lambda: store


# -- settings ------------------------------------------------------------------------------


def test_settings_default_to_a_30s_window_of_10_buckets() -> None:
    assert BreakerConfig.from_config({}) == BreakerConfig(
        window_s=30.0, buckets=10, min_calls=10, failure_rate=0.5, open_s=30.0,
        half_open_calls=3)


def test_settings_are_read_from_strings_as_environment_values_are() -> None:
    config = BreakerConfig.from_config({"open_s": "1.5", "min_calls": "4"})
    assert (config.open_s, config.min_calls) == (1.5, 4)


@pytest.mark.parametrize(("mapping", "named"), [
    ({"failure_rate": 0}, "failure_rate"),
    ({"failure_rate": 1.5}, "failure_rate"),
    ({"window_s": -1}, "window_s"),
    ({"open_s": "soon"}, "open_s"),
    ({"min_calls": "2.5"}, "min_calls"),
    ({"min_calls": 2.5}, "min_calls"),
    ({"half_open_calls": 0}, "half_open_calls"),
    ({"buckets": True}, "buckets"),
    ({"window_s": float("nan")}, "window_s"),
    ({"open_seconds": 3}, "open_seconds"),
])
def test_a_bad_setting_is_a_configuration_error_naming_it(
        mapping: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        BreakerConfig.from_config(mapping)


def test_each_breaker_key_carries_its_own_hash_tag() -> None:
    assert keys.breaker("tidings", "twilio-a") == "tidings:breaker:{twilio-a}"


# -- which failures count against a provider -------------------------------------------------


@pytest.mark.parametrize(("failure", "counts"), [
    (Failure(TRANSIENT, "timeout", code="timeout"), True),
    (Failure(TRANSIENT, "HTTP 503", http_status=503), True),
    (Failure(PERMANENT, "HTTP 401: Authenticate", http_status=401), True),
    (Failure(PERMANENT, "SMTP login refused", code="auth", smtp_code=535), True),
    (Failure(PERMANENT, "unknown number", code="21211", bad_address=True), False),
    (Failure(PERMANENT, "HTTP 400: body required", code="21602", http_status=400), False),
])
def test_only_transient_and_provider_side_failures_count_against_a_provider(
        failure: Failure, counts: bool) -> None:
    assert provider_at_fault(failure) is counts


# -- failover ----------------------------------------------------------------------------------


class Fake:
    """A provider answering with ``failure`` (None: sent) or raising ``raises``."""

    def __init__(self, name: str, failure: Failure | None = None, channel: Channel = "sms",
                 raises: Exception | None = None) -> None:
        self.name, self.channel = name, channel
        self.failure, self.raises = failure, raises
        self.calls = 0
        self.closed = False

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        watch = Stopwatch(self.name, delivery)
        return watch.failed(self.failure) if self.failure else watch.sent(f"{self.name}-id")

    async def aclose(self) -> None:
        self.closed = True


DOWN = Failure(TRANSIENT, "HTTP 503: injected", http_status=503)
DELIVERY = Delivery(
    parse_notification({"type": "order.shipped", "idempotency_key": "n-1",
                        "recipient": {"user_id": "u-1", "phone": "+14155550123"},
                        "content": {"body": "Shipped"}}),
    "sms", "+14155550123", Content(body="Shipped"), "n-1:sms:x")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(clock: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(MemoryBreakerStore(clock), default=CONFIG)


async def test_a_healthy_first_provider_sends_alone(breakers: CircuitBreakers) -> None:
    a, b = Fake("a"), Fake("b")
    result = await FailoverProvider([a, b], breakers).send(DELIVERY)
    assert (result.ok, result.provider, result.provider_message_id) == (True, "a", "a-id")
    assert b.calls == 0


async def test_a_transient_failure_fails_over_to_the_next_provider(
        breakers: CircuitBreakers) -> None:
    a, b = Fake("a", DOWN), Fake("b")
    result = await FailoverProvider([a, b], breakers).send(DELIVERY)
    assert (result.ok, result.provider, a.calls) == (True, "b", 1)


async def test_a_provider_that_raises_fails_over_and_counts_against_it(
        breakers: CircuitBreakers) -> None:
    a, b = Fake("a", raises=KeyError("bug")), Fake("b")
    failover = FailoverProvider([a, b], breakers)
    results = [await failover.send(DELIVERY) for _ in range(CONFIG.min_calls)]
    assert {r.provider for r in results} == {"b"}
    assert (await breakers.states())["a"] is BreakerState.OPEN


async def test_a_dead_address_is_returned_as_is_and_never_opens_the_breaker(
        breakers: CircuitBreakers) -> None:
    dead = Failure(PERMANENT, "unknown number", code="21211", bad_address=True)
    a, b = Fake("a", dead), Fake("b")
    failover = FailoverProvider([a, b], breakers)
    results = [await failover.send(DELIVERY) for _ in range(CONFIG.min_calls * 2)]
    assert {(r.provider, r.failure) for r in results} == {("a", dead)}
    assert b.calls == 0
    assert (await breakers.states())["a"] is BreakerState.CLOSED


async def test_an_open_breaker_skips_its_provider_without_calling_it(
        breakers: CircuitBreakers) -> None:
    a, b = Fake("a"), Fake("b")
    await open_breaker(breakers.store, "a")
    result = await FailoverProvider([a, b], breakers).send(DELIVERY)
    assert (result.provider, a.calls) == ("b", 0)


async def test_when_every_breaker_is_open_it_says_to_wait_for_the_earliest_half_open(
        breakers: CircuitBreakers, clock: FakeClock) -> None:
    await open_breaker(breakers.store, "a")
    clock.advance(2)
    await open_breaker(breakers.store, "b")
    result = await FailoverProvider([Fake("a"), Fake("b")], breakers).send(DELIVERY)
    assert result.failure is not None
    assert (result.provider, result.failure.kind, result.failure.code) == (
        "sms-failover", TRANSIENT, "breaker_open")
    assert result.failure.retry_after == CONFIG.open_s - 2
    assert "'a' in 3.0s" in result.failure.reason
    assert "'b' in 5.0s" in result.failure.reason


async def test_when_the_last_provider_fails_its_failure_is_returned(
        breakers: CircuitBreakers) -> None:
    a, b = Fake("a", DOWN), Fake("b", DOWN)
    result = await FailoverProvider([a, b], breakers).send(DELIVERY)
    assert (result.provider, result.failure) == ("b", DOWN)


async def test_the_breaker_opens_then_half_opens_and_closes_when_the_provider_recovers(
        breakers: CircuitBreakers, clock: FakeClock) -> None:
    a, b = Fake("a", DOWN), Fake("b")
    failover = FailoverProvider([a, b], breakers)
    for _ in range(CONFIG.min_calls + 3):
        await failover.send(DELIVERY)
    assert a.calls == CONFIG.min_calls
    a.failure = None
    clock.advance(CONFIG.open_s)
    results = [await failover.send(DELIVERY) for _ in range(CONFIG.half_open_calls + 2)]
    assert {r.provider for r in results} == {"a"}
    assert breakers.transitions == {("a", BreakerState.OPEN): 1,
                                    ("a", BreakerState.HALF_OPEN): 1,
                                    ("a", BreakerState.CLOSED): 1}


async def test_every_state_change_is_logged_as_a_warning(
        breakers: CircuitBreakers, caplog: pytest.LogCaptureFixture) -> None:
    failover = FailoverProvider([Fake("twilio-a", DOWN), Fake("b")], breakers)
    with caplog.at_level(logging.WARNING, "tidings.sinks.failover"):
        for _ in range(CONFIG.min_calls):
            await failover.send(DELIVERY)
    assert caplog.messages == ["breaker of provider 'twilio-a' opened: 4 of 4 calls failed "
                               "in 10s; failing over for 5s"]


class Unreachable:
    """A breaker store whose server is down."""

    async def allow(self, name: str, config: BreakerConfig) -> Permit:
        raise ConnectionError("store down")

    async def record(self, name: str, config: BreakerConfig, ok: bool, *,
                     trial: bool = False) -> Transition | None:
        raise ConnectionError("store down")

    async def state(self, name: str) -> BreakerState:
        raise ConnectionError("store down")


async def test_an_unreachable_store_lets_calls_through(caplog: pytest.LogCaptureFixture) -> None:
    breakers = CircuitBreakers(Unreachable())
    result = await FailoverProvider([Fake("a")], breakers).send(DELIVERY)
    assert (result.ok, result.provider) == (True, "a")
    assert "breaker of provider 'a' unavailable" in caplog.text


@pytest.mark.parametrize(("providers", "problem"), [
    ([], "at least one"),
    ([Fake("a"), Fake("b", channel="push")], "one channel"),
    ([Fake("a"), Fake("a")], "distinct names"),
])
def test_failover_over_providers_that_cannot_work_together_is_refused(
        breakers: CircuitBreakers, providers: list[Fake], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        FailoverProvider(providers, breakers)


async def test_closing_the_failover_closes_every_provider(breakers: CircuitBreakers) -> None:
    a, b = Fake("a"), Fake("b")
    await FailoverProvider([a, b], breakers).aclose()
    assert [a.closed, b.closed] == [True, True]


async def test_a_send_that_may_have_arrived_does_not_fail_over_to_another_account(
    breakers: CircuitBreakers,
) -> None:
    lost_reply = Failure(TRANSIENT, "no reply in time (ReadTimeout)", code="timeout",
                         maybe_delivered=True)
    a, b = Fake("a", lost_reply), Fake("b")
    result = await FailoverProvider([a, b], breakers).send(DELIVERY)
    assert (result.ok, result.provider) == (False, "a")
    assert b.calls == 0, "the second account could deliver it a second time"
