"""Fixtures and readers shared by the scheduler's integration tests.

Each test gets its own PostgreSQL schema (migrated) and Redis key prefix, both removed after
(the ``engine`` and ``redis`` fixtures of tests/conftest.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import App, Settings
from tidings.keys import PartitionKeys
from tidings.scheduling import Schedules


def settings_for(redis_url: str, database_url: str, namespace: str, schema: str) -> Settings:
    return Settings(
        redis_url=redis_url, database_url=database_url, namespace=namespace,
        database_schema=schema, partitions=2,
    )


@pytest.fixture
async def app(
    redis_url: str, database_url: str, namespace: str, schema_name: str, redis: Redis
) -> AsyncIterator[App]:
    app = App("scheduler-test")
    await app.start(settings_for(redis_url, database_url, namespace, schema_name))
    yield app
    await app.stop()


@pytest.fixture
def store(engine: AsyncEngine) -> Schedules:
    return Schedules(engine)


async def published(redis: Redis, namespace: str, topic: str) -> list[dict[str, Any]]:
    """Every message on every lane of every partition of ``topic``: envelope plus payload."""
    partitions = int(await redis.hget(f"{namespace}:topics", topic) or 0)
    found = []
    for partition in range(partitions):
        for lane in PartitionKeys(namespace, topic, partition).lanes:
            for _, fields in await redis.xrange(lane):
                envelope = orjson.loads(fields[b"e"])
                found.append({"envelope": envelope, "payload": orjson.loads(fields[b"d"])})
    return found


def duplicates(ids: list[str]) -> dict[str, int]:
    return {i: n for i, n in Counter(ids).items() if n > 1}
