"""Three scheduler processes, two SIGKILLed mid-transaction, clocks skewed: every tick once.

The clocks of the processes are skewed with libfaketime (-30 s, +20 s, +45 s). The scheduler
judges "due" by PostgreSQL's clock, so no skew may make a tick fire early or twice. One victim
is killed while it holds claimed schedules in an uncommitted tick; the other after its relay
has published to Redis but before it deleted the outbox rows, so the survivor publishes those
rows again and the Redis-side marker must drop them. libfaketime is a system package
(`apt-get install faketime`); without it the test skips, saying so.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipelines.sched_support import duplicates, published, store
from tidings.scheduling import Schedule, Schedules, Timing
from tidings.scheduling.tick import message_id
from tidings.tables import outbox

__all__ = ["store"]  # fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HAVE_FAKETIME = LIBFAKETIME.exists()
VICTIM = Path(__file__).parents[1] / "pipelines" / "sched_victim.py"
TOPIC = "sched.exactly_once"
TICKS = 9  # start .. start + 8 s


def _env(
    redis_url: str, database_url: str, namespace: str, schema: str, skew: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_DATABASE_URL": database_url,
        "TIDINGS_NAMESPACE": namespace,
        "TIDINGS_DATABASE_SCHEMA": schema,
        "TIDINGS_PARTITIONS": "2",
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": skew,
        # Only the wall clock is skewed; asyncio's timers keep to the real monotonic clock.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return env


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _wait_for_line(proc: asyncio.subprocess.Process, line: bytes, within: float) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(within):
        while (got := await proc.stdout.readline()) != line:
            assert got, f"process {proc.pid} exited before printing {line!r}"


async def _db_now_plus(engine: AsyncEngine, seconds: int) -> datetime:
    async with engine.connect() as conn:
        query = text("SELECT date_trunc('second', now()) + make_interval(secs => :s)")
        at: datetime = (await conn.execute(query, {"s": seconds})).scalar_one()
        return at


async def _until_settled(engine: AsyncEngine, fires: int, within: float) -> None:
    """Poll until every expected fire is recorded and the outbox is empty."""
    async with asyncio.timeout(within):
        for _ in iter(int, 1):
            if await _settled(engine) == (fires, 0):
                return
            await asyncio.sleep(0.25)


async def _settled(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        fires = (await conn.execute(text("SELECT count(*) FROM schedule_fires"))).scalar_one()
        left = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    return int(fires), int(left)


async def test_every_due_tick_is_published_exactly_once_despite_kills_and_skew(
    engine: AsyncEngine, store: Schedules, redis: Redis, redis_url: str, database_url: str,
    namespace: str, schema_name: str, processes: list[asyncio.subprocess.Process],
    tmp_path: Path,
) -> None:
    if not HAVE_FAKETIME:
        pytest.skip(f"libfaketime is not installed ({LIBFAKETIME} is missing): it skews the"
                    " schedulers' clocks here; install it with `apt-get install -y faketime`")
    start = await _db_now_plus(engine, 6)  # time for three interpreters to start
    end = start + timedelta(seconds=TICKS - 1)
    ids = []
    for n in range(30):
        kind, expression = ("every", "1s") if n < 20 else ("cron", "* * * * * *")
        timing = Timing.parse(kind, expression, "Australia/Lord_Howe", start=start, end=end)
        status = await store.add(Schedule(
            f"s{n:02}", timing, TOPIC, {"n": n}, key=f"k{n}" if n % 2 else None,
            misfire="fire_all",
        ))
        ids.append(status.id)
    expected = {
        message_id(i, start + timedelta(seconds=k)) for i in ids for k in range(TICKS)
    }

    async def spawn(skew: str, *args: str, log: str) -> asyncio.subprocess.Process:
        env = _env(redis_url, database_url, namespace, schema_name, skew)
        with (tmp_path / log).open("wb") as stderr:
            return await asyncio.create_subprocess_exec(
                *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )

    tick_victim = await spawn("-30", sys.executable, str(VICTIM), "victim-tick", "tick", "30",
                              log="tick.log")
    relay_victim = await spawn("+20", sys.executable, str(VICTIM), "victim-relay", "relay", "30",
                               log="relay.log")
    survivor = await spawn("+45", str(Path(sys.executable).parent / "tidings"), "schedules", "run",
                           "--name", "survivor", "--poll", "0.2", "--no-migrate",
                           log="survivor.log")
    processes.extend([tick_victim, relay_victim, survivor])

    # Each victim stops inside its transaction and is killed there.
    await _wait_for_line(tick_victim, b"HOLD tick\n", within=30)
    tick_victim.kill()
    await _wait_for_line(relay_victim, b"HOLD relay\n", within=30)
    relay_victim.kill()
    assert await tick_victim.wait() == -9
    assert await relay_victim.wait() == -9

    await _until_settled(engine, len(expected), within=40)
    survivor.terminate()
    assert await survivor.wait() == 0

    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT message_id, scheduler, lateness_ms FROM schedule_fires"
        ))).all()
    assert {r.message_id for r in rows} == expected
    assert min(r.lateness_ms for r in rows) >= 0, "a skewed clock fired a tick early"
    assert "victim-tick" not in {r.scheduler for r in rows}, "the killed tick left fires behind"
    sent = [m["envelope"]["id"] for m in await published(redis, namespace, TOPIC)]
    assert not duplicates(sent)
    assert set(sent) == expected
    log = (tmp_path / "survivor.log").read_text()
    assert "already published, not sent again" in log, "the relay kill was not exercised"
