"""Circuit breakers in Redis: the shared behaviour suite, the server's clock, and agreement with
the in-memory store on any sequence of calls."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from breaker_behaviour import CONFIG, BreakerBehaviour, Connect, FakeClock, open_breaker
from tidings import keys
from tidings.sinks.breaker import (
    BreakerConfig,
    BreakerState,
    MemoryBreakerStore,
    RedisBreakerStore,
)

pytestmark = [pytest.mark.redis]


class TestBreakerOnRedis(BreakerBehaviour):
    @pytest.fixture
    async def connect(self, redis_url: str, namespace: str, redis: Redis,
                      clock: FakeClock) -> AsyncIterator[Connect]:
        clients: list[Redis] = []

        def connect() -> RedisBreakerStore:
            client = Redis.from_url(redis_url)
            clients.append(client)
            return RedisBreakerStore(client, namespace, clock=clock)

        yield connect
        for client in clients:
            await client.aclose()


async def test_a_breaker_is_one_expiring_hash_under_its_own_hash_tag(
        redis: Redis, namespace: str) -> None:
    await open_breaker(RedisBreakerStore(redis, namespace))
    key = keys.breaker(namespace, "twilio-a")
    assert await redis.type(key) == b"hash"
    assert await redis.pttl(key) > 0


async def test_on_the_server_clock_an_open_breaker_half_opens_after_open_s(
        redis: Redis, namespace: str) -> None:
    store = RedisBreakerStore(redis, namespace)
    await open_breaker(store)
    config = BreakerConfig(window_s=10, min_calls=4, open_s=0.3, half_open_calls=2)
    permit = await store.allow("twilio-a", config)
    assert permit.state is BreakerState.OPEN
    assert 0 < permit.retry_after <= CONFIG.open_s
    deadline = time.monotonic() + 30
    # open_breaker used CONFIG (open_s=5): poll rather than sleep a fixed time.
    while await store.state("twilio-a") is BreakerState.OPEN:
        assert time.monotonic() < deadline, "never half-opened"
        await asyncio.sleep(0.05)
    permit = await store.allow("twilio-a", config)
    assert (permit.state, permit.allowed, permit.trial) == (BreakerState.HALF_OPEN, True, True)


# One operation: allow, record (ok, trial), or let milliseconds pass (often exactly to an
# open_s or bucket boundary, where off-by-one mistakes hide).
waits = st.one_of(st.sampled_from([1, 500, 1000, 2000]), st.integers(0, 4000))
operations = st.lists(st.one_of(
    st.tuples(st.just("allow"), st.just(0), st.just(False)),
    st.tuples(st.just("record"), st.booleans(), st.booleans()),
    st.tuples(st.just("wait"), waits, st.just(False)),
), max_size=40)
configs = st.builds(BreakerConfig, window_s=st.sampled_from([1.0, 3.0, 10.0]),
                    buckets=st.integers(1, 7), min_calls=st.integers(1, 5),
                    failure_rate=st.sampled_from([0.2, 0.5, 1.0]),
                    open_s=st.sampled_from([0.5, 2.0]), half_open_calls=st.integers(1, 3))


@settings(max_examples=80, deadline=None)
@given(config=configs, ops=operations, start=st.integers(0, 10**12))
def test_redis_and_memory_stores_agree_on_any_sequence_of_calls(
        redis_url: str, config: BreakerConfig, ops: list[tuple[str, object, bool]],
        start: int) -> None:
    asyncio.run(_agree(redis_url, config, ops, start / 1000))


async def _agree(redis_url: str, config: BreakerConfig, ops: list[tuple[str, object, bool]],
                 start: float) -> None:
    clock, namespace = FakeClock(start), f"tt-{uuid.uuid4().hex[:10]}"
    memory = MemoryBreakerStore(clock)
    async with Redis.from_url(redis_url) as client:
        redis = RedisBreakerStore(client, namespace, clock=clock)
        last_round = 0
        try:
            for op, first, second in ops:
                if op == "wait":
                    assert isinstance(first, int)
                    clock.advance(first / 1000)
                elif op == "allow":
                    permit = await redis.allow("p", config)
                    assert permit == await memory.allow("p", config)
                    last_round = permit.round
                else:
                    assert await redis.record("p", config, bool(first), trial=second,
                                              round=last_round) == (
                        await memory.record("p", config, bool(first), trial=second,
                                            round=last_round))
                assert await redis.state("p") == await memory.state("p")
        finally:
            await client.delete(keys.breaker(namespace, "p"),
                                keys.breaker_registry(namespace))
