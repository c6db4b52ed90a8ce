"""A scheduler counts each fire's lateness (fire time minus due time) in process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pipelines.sched_support import app, store
from processes import REPO, TIDINGS, Servers, drop_schema
from tidings import App
from tidings.scheduling import Schedule, Scheduler, Schedules, Timing

__all__ = ["app", "store"]  # fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_each_fire_s_lateness_is_observed_in_seconds(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis
) -> None:
    timing = Timing.parse("cron", "*/5 * * * *", "UTC")
    status = await store.add(Schedule("late", timing, "reminders", {"n": 1}))
    assert status.next_fire_at is not None
    scheduler = Scheduler(app, engine, name="s1")
    registry = CollectorRegistry()
    registry.register(scheduler.metrics)

    await scheduler.step(as_of=status.next_fire_at + timedelta(seconds=2))
    await scheduler.step(as_of=status.next_fire_at + timedelta(seconds=3))  # nothing due

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert get("tidings_scheduler_fires_total") == 1
    assert get("tidings_scheduler_lateness_seconds_count") == 1
    assert get("tidings_scheduler_lateness_seconds_sum") == 2.0
    assert get("tidings_scheduler_lateness_seconds_bucket", le="1.0") == 0
    assert get("tidings_scheduler_lateness_seconds_bucket", le="2.5") == 1


async def test_a_scheduler_process_serves_its_metrics(
    redis_url: str, database_url: str, tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:10]
    servers = Servers(redis_url, database_url, f"tt-{suffix}", f"tt_{suffix}", tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        str(TIDINGS), "schedules", "run", "--http-port", str(port), cwd=REPO,
        env=servers.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        body = ""
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    reply = await client.get(f"http://127.0.0.1:{port}/metrics")
                    body = reply.text
                    if reply.status_code == 200 and "tidings_scheduler_fires_total" in body:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        assert "tidings_scheduler_fires_total 0.0" in body
        assert "tidings_scheduler_lateness_seconds_bucket" in body
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await drop_schema(servers)
        async with Redis.from_url(redis_url) as admin:
            doomed = [k async for k in admin.scan_iter(match=f"{servers.namespace}*")]
            if doomed:
                await admin.delete(*doomed)
