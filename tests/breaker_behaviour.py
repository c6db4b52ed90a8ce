"""The circuit breaker's behaviour suite, written once and run on two stores.

`tests/unit/test_breaker_memory.py` runs it on `MemoryBreakerStore` and
`tests/integration/test_breaker_redis.py` on `RedisBreakerStore`; each subclass only provides the
`connect` fixture: a factory of stores that share one state (one per "process") and read time
from the suite's `clock`, so time moves by hand and no assertion depends on real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tidings.sinks.breaker import BreakerConfig, BreakerState, BreakerStore, Transition

Connect = Callable[[], BreakerStore]

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
CONFIG = BreakerConfig(window_s=10, buckets=10, min_calls=4, failure_rate=0.5, open_s=5,
                       half_open_calls=2)
NAME = "twilio-a"


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def record_all(store: BreakerStore, outcomes: str, name: str = NAME) -> list[Transition]:
    """Record outcomes written as a string: ``x`` a failure, ``.`` a success."""
    changes = [await store.record(name, CONFIG, ok=c == ".") for c in outcomes]
    return [c for c in changes if c is not None]


async def open_breaker(store: BreakerStore, name: str = NAME) -> None:
    await record_all(store, "xxxx", name)
    assert await store.state(name) is OPEN


async def half_open(store: BreakerStore, clock: FakeClock) -> None:
    await open_breaker(store)
    clock.advance(CONFIG.open_s)


class BreakerBehaviour:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, connect: Connect) -> BreakerStore:
        return connect()

    async def test_a_new_breaker_is_closed_and_allows_calls(self, store: BreakerStore) -> None:
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed, permit.trial) == (CLOSED, True, False)
        assert await store.state(NAME) is CLOSED

    async def test_stays_closed_below_min_calls_even_if_every_call_fails(
            self, store: BreakerStore) -> None:
        assert await record_all(store, "xxx") == []
        assert (await store.allow(NAME, CONFIG)).allowed

    async def test_opens_once_min_calls_reach_the_failure_rate(self, store: BreakerStore) -> None:
        changes = await record_all(store, ".x.x")
        assert changes == [Transition(NAME, CLOSED, OPEN, calls=4, failures=2)]
        assert await store.state(NAME) is OPEN

    async def test_stays_closed_while_the_failure_rate_is_below_the_threshold(
            self, store: BreakerStore) -> None:
        assert await record_all(store, "..x...x...x..") == []
        assert await store.state(NAME) is CLOSED

    async def test_an_open_breaker_refuses_and_says_when_it_half_opens(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await open_breaker(store)
        clock.advance(2)
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed, permit.retry_after) == (OPEN, False, 3.0)

    async def test_results_of_calls_allowed_before_it_opened_are_ignored(
            self, store: BreakerStore) -> None:
        await open_breaker(store)
        assert await record_all(store, "...") == []
        assert await store.state(NAME) is OPEN

    async def test_reads_half_open_once_open_s_has_passed(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await open_breaker(store)
        clock.advance(CONFIG.open_s - 0.001)
        assert await store.state(NAME) is OPEN
        clock.advance(0.001)
        assert await store.state(NAME) is HALF_OPEN

    async def test_the_first_call_after_open_s_half_opens_it_as_a_trial(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed, permit.trial) == (HALF_OPEN, True, True)
        assert permit.transition == Transition(NAME, OPEN, HALF_OPEN)

    async def test_half_open_lets_only_half_open_calls_through_across_processes(
            self, connect: Connect, clock: FakeClock) -> None:
        stores = [connect() for _ in range(3)]
        await half_open(stores[0], clock)
        permits = await asyncio.gather(*(s.allow(NAME, CONFIG) for s in stores * 3))
        assert sum(p.allowed for p in permits) == CONFIG.half_open_calls
        assert all(p.trial for p in permits if p.allowed)
        assert sum(p.transition is not None for p in permits) == 1

    async def test_a_half_open_breaker_with_every_trial_out_asks_to_wait_briefly(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        for _ in range(CONFIG.half_open_calls):
            await store.allow(NAME, CONFIG)
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed) == (HALF_OPEN, False)
        assert 0 < permit.retry_after <= 1.0

    async def test_as_many_trial_successes_as_trial_calls_close_it(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        permits = [await store.allow(NAME, CONFIG) for _ in range(CONFIG.half_open_calls)]
        assert await store.record(NAME, CONFIG, ok=True, trial=True,
                                  round=permits[0].round) is None
        closed = await store.record(NAME, CONFIG, ok=True, trial=True, round=permits[1].round)
        assert closed == Transition(NAME, HALF_OPEN, CLOSED)
        assert await store.state(NAME) is CLOSED

    async def test_a_closed_again_breaker_starts_from_an_empty_window(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await record_all(store, "..xx")
        clock.advance(CONFIG.open_s)
        for _ in range(CONFIG.half_open_calls):
            permit = await store.allow(NAME, CONFIG)
            await store.record(NAME, CONFIG, ok=True, trial=True, round=permit.round)
        # The four calls that opened it are still within window_s but no longer count.
        assert await record_all(store, "x.") == []

    async def test_a_failed_trial_reopens_it_for_open_s(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        trial = await store.allow(NAME, CONFIG)
        reopened = await store.record(NAME, CONFIG, ok=False, trial=True, round=trial.round)
        assert reopened == Transition(NAME, HALF_OPEN, OPEN)
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed, permit.retry_after) == (OPEN, False, CONFIG.open_s)

    async def test_a_late_answer_from_an_earlier_half_open_round_does_not_count(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        late, failing = await store.allow(NAME, CONFIG), await store.allow(NAME, CONFIG)
        await store.record(NAME, CONFIG, ok=False, trial=True, round=failing.round)
        clock.advance(CONFIG.open_s)
        fresh = await store.allow(NAME, CONFIG)  # the next round
        assert fresh.round == late.round + 1
        for _ in range(CONFIG.half_open_calls):  # the last round's trial answers, late
            assert await store.record(NAME, CONFIG, ok=True, trial=True,
                                      round=late.round) is None
        assert await store.state(NAME) is HALF_OPEN

    async def test_results_without_a_trial_permit_do_not_count_while_half_open(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        await store.allow(NAME, CONFIG)
        assert await store.record(NAME, CONFIG, ok=False) is None
        assert await store.state(NAME) is HALF_OPEN

    async def test_trial_permits_never_answered_are_given_again_after_open_s(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        for _ in range(CONFIG.half_open_calls):
            await store.allow(NAME, CONFIG)
        clock.advance(CONFIG.open_s)
        permit = await store.allow(NAME, CONFIG)
        assert (permit.state, permit.allowed, permit.trial) == (HALF_OPEN, True, True)

    async def test_failures_within_the_window_count_across_buckets(
            self, store: BreakerStore, clock: FakeClock) -> None:
        for _ in range(CONFIG.min_calls - 1):
            await record_all(store, "x")
            clock.advance(CONFIG.window_s / CONFIG.buckets)
        assert len(await record_all(store, "x")) == 1

    async def test_failures_older_than_the_window_no_longer_count(
            self, store: BreakerStore, clock: FakeClock) -> None:
        await record_all(store, "xxx")
        clock.advance(CONFIG.window_s)
        assert await record_all(store, "x") == []
        assert await store.state(NAME) is CLOSED

    async def test_each_provider_has_a_breaker_of_its_own(self, store: BreakerStore) -> None:
        await open_breaker(store, "twilio-a")
        assert (await store.allow("twilio-b", CONFIG)).allowed
        assert await store.state("twilio-b") is CLOSED

    async def test_a_breaker_opened_by_one_process_is_open_for_every_process(
            self, connect: Connect) -> None:
        first, second = connect(), connect()
        await open_breaker(first)
        assert not (await second.allow(NAME, CONFIG)).allowed
        assert await second.state(NAME) is OPEN

    async def test_processes_counting_together_open_it_exactly_once(
            self, connect: Connect) -> None:
        stores = [connect() for _ in range(4)]
        changes = await asyncio.gather(*(s.record(NAME, CONFIG, ok=False) for s in stores * 3))
        assert [c for c in changes if c is not None] == [
            Transition(NAME, CLOSED, OPEN, calls=4, failures=4)]
