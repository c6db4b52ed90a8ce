"""Retries due hours away wait in PostgreSQL and come back to Redis when nearly due."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import text

from tidings import App, Message, Priority, Retry, Settings
from tidings.database import quote_ident
from tidings.message import now_ms
from tidings.parking import Parking
from tidings.retry import RetryPolicy
from tidings.streams import RedisTransport
from tidings.testing import running

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TOPIC, AGENT = "parking.jobs", "parking.work"
PATIENT = RetryPolicy(strategy="fixed", base=1, max_delay=86_400, max_attempts=3)


class Job(BaseModel):
    n: int


@pytest.fixture
def settings(redis_url: str, database_url: str, namespace: str, schema_name: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                    database_schema=schema_name, block_ms=50, park_after_s=3600)


@pytest.fixture
async def started(
    settings: Settings, redis: Redis,
) -> AsyncIterator[tuple[App, list[int], Parking]]:
    attempts: list[int] = []
    app = App("parking")
    jobs = app.topic(TOPIC, model=Job, partitions=1)

    @app.agent(jobs, name=AGENT, retry=PATIENT)
    async def work(message: Message[Job]) -> None:
        attempts.append(message.envelope.attempt)
        if message.envelope.attempt == 1:
            raise Retry(delay=7200, reason="try again in two hours")

    async def migrated(app: App) -> None:
        from tidings import migrate

        await migrate.upgrade(app.engine, settings.database_schema)

    app.on_start(migrated)
    async with running(app, settings, transport=RedisTransport(redis), database=True):
        yield app, attempts, Parking(app.engine, park_after_s=settings.park_after_s)
        async with app.engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {quote_ident(settings.database_schema)}"
                                    " CASCADE"))


async def parked(app: App) -> list[Any]:
    async with app.engine.connect() as conn:
        return list((await conn.execute(text(
            "SELECT delay_set, member, due_at - now() AS wait FROM parked_retries"
        ))).all())


async def until(condition: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, "still not true"
        await asyncio.sleep(0.02)


def delay_sets(app: App) -> list[str]:
    return [app.get_topic(TOPIC).keys(0).delayed(AGENT)]


async def failed_once(app: App, attempts: list[int], redis: Redis) -> None:
    await app.get_topic(TOPIC).send(Job(n=1))
    delayed = delay_sets(app)[0]

    async def waiting() -> bool:
        return await redis.zcard(delayed) == 1

    await until(waiting)
    assert attempts == [1]


async def parked_and_due(app: App, attempts: list[int], parking: Parking, redis: Redis) -> None:
    """A retry parked in PostgreSQL, then two hours later: due."""
    await failed_once(app, attempts, redis)
    await parking.park(app.transport, delay_sets(app))
    async with app.engine.begin() as conn:
        await conn.execute(text("UPDATE parked_retries SET due_at = now()"))


async def test_a_retry_due_in_hours_moves_from_redis_to_postgres(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    app, attempts, parking = started
    await failed_once(app, attempts, redis)

    assert await parking.park(app.transport, delay_sets(app)) == 1
    assert await parking.park(app.transport, delay_sets(app)) == 0
    [row] = await parked(app)
    assert row.delay_set == delay_sets(app)[0]
    assert 7100 < row.wait.total_seconds() <= 7200
    assert await redis.zcard(delay_sets(app)[0]) == 0, "no longer held in Redis memory"
    keys = app.get_topic(TOPIC).keys(0)
    assert (await redis.xpending(keys.lane(Priority.NORMAL), AGENT))["pending"] == 0


async def test_a_parked_retry_comes_back_when_nearly_due_and_runs_once(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    app, attempts, parking = started
    await parked_and_due(app, attempts, parking, redis)
    assert await parking.unpark(app.transport) == 1
    assert await parking.unpark(app.transport) == 0

    async def retried() -> bool:
        return attempts == [1, 2]

    await until(retried)
    assert await parked(app) == []


async def test_a_move_repeated_after_a_crash_keeps_one_row_and_one_member(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    app, attempts, parking = started
    await failed_once(app, attempts, redis)
    [(member, due)] = await app.transport.due_after(delay_sets(app)[0], 0, 10)
    await parking.park(app.transport, delay_sets(app))
    await app.transport.schedule([(delay_sets(app)[0], member, due)])  # as if ZREM never ran
    await parking.park(app.transport, delay_sets(app))
    assert len(await parked(app)) == 1
    assert await redis.zcard(delay_sets(app)[0]) == 0


async def test_a_retry_due_soon_stays_in_redis(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    app, _, parking = started
    soon = now_ms() + 60_000
    await app.transport.schedule([(delay_sets(app)[0], b'{"v":1}\x00{}', soon)])
    assert await parking.park(app.transport, delay_sets(app)) == 0
    assert await redis.zcard(delay_sets(app)[0]) == 1


async def test_a_retry_due_after_the_year_9999_is_parked_until_then(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    # A delay given as a time (epoch milliseconds as seconds, say): before, its due time
    # could not become a datetime, and every move of the set failed, for good.
    app, _, parking = started
    await app.transport.schedule([(delay_sets(app)[0], b'{"v":1}\x00{}', 10**17)])
    assert await parking.park(app.transport, delay_sets(app)) == 1
    [row] = await parked(app)
    assert row.wait.days > 365 * 7000


async def test_retries_parked_already_come_back_while_parking_more_fails(
    started: tuple[App, list[int], Parking], redis: Redis,
) -> None:
    app, attempts, parking = started
    await parked_and_due(app, attempts, parking, redis)

    def broken() -> list[str]:
        raise RuntimeError("cannot list the delay sets")

    parking.every_s = 0.05
    running_parking = asyncio.create_task(parking.run(app.transport, broken))
    try:
        async def retried() -> bool:
            return attempts == [1, 2]

        await until(retried)
    finally:
        parking.stop()
        await running_parking
    assert await parked(app) == []


def test_a_retry_is_never_brought_back_as_early_as_it_would_be_parked() -> None:
    engine: Any = None  # not used to build one
    assert Parking(engine, park_after_s=3600).lead_s == 60
    assert Parking(engine, park_after_s=10).lead_s == 5  # not 60: parked, unparked, again
