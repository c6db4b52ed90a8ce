"""A worker stops within its deadline even when PostgreSQL hangs under it."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import App, Message, Settings, Worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def test_a_stop_is_not_held_up_by_a_parked_retries_table_locked_elsewhere(
    engine: AsyncEngine, redis: Redis, redis_url: str, database_url: str, namespace: str,
    schema_name: str,
) -> None:
    app = App("stops")

    @app.agent(app.topic("stops.jobs", partitions=1), name="stops.work")
    async def work(message: Message[dict[str, int]]) -> None:
        return None

    config = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                      database_schema=schema_name, block_ms=50, shutdown_timeout_s=1.0)
    async with engine.connect() as locker:  # the migrated schema, one table locked
        await locker.execute(text("LOCK TABLE parked_retries IN ACCESS EXCLUSIVE MODE"))
        worker = Worker(app, config)
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(1.5)  # its first round of parked retries now waits on the lock

        started = time.monotonic()
        worker.request_stop()
        await asyncio.wait_for(running, 10)
        stopped_in = time.monotonic() - started
        await locker.rollback()

    assert stopped_in < 6, f"stopped after {stopped_in:.1f}s"
