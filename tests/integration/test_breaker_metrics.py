"""The circuit breakers' shared state, as /metrics reports it from Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tidings.observability.metrics import take_snapshot
from tidings.observability.sources import Sources
from tidings.sinks.breaker import BreakerConfig, BreakerState, RedisBreakerStore
from tidings.sinks.failover import CircuitBreakers

pytestmark = [pytest.mark.redis]

TRIPS_FAST = BreakerConfig(min_calls=2, failure_rate=0.5, open_s=60)


async def test_a_scrape_reports_every_breaker_s_state(redis: Redis, namespace: str) -> None:
    breakers = CircuitBreakers(RedisBreakerStore(redis, namespace), default=TRIPS_FAST)
    for name, ok in [("twilio", False), ("twilio", False), ("fcm", True)]:
        permit = await breakers.allow(name)
        await breakers.record(name, permit, ok=ok)

    snapshot = await take_snapshot(Sources(redis=redis, namespace=namespace))

    assert snapshot.breakers == {"fcm": BreakerState.CLOSED, "twilio": BreakerState.OPEN}
    assert breakers.transitions == {("twilio", BreakerState.OPEN): 1}


async def test_a_scrape_without_breakers_reports_none(redis: Redis, namespace: str) -> None:
    snapshot = await take_snapshot(Sources(redis=redis, namespace=namespace))

    assert snapshot.breakers == {}
