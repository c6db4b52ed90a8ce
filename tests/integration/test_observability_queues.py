"""`tidings queues` on real Redis: its numbers are the ones XLEN and XPENDING give."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from tidings import App, Priority, Settings
from tidings.keys import PartitionKeys

pytestmark = [pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
TIDINGS = Path(sys.executable).parent / "tidings"
TOPIC = "obs.orders"
GROUP = "obs.ship"


def tidings(
    *args: str, redis_url: str, namespace: str, home: Path
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a `tidings` run against this test's namespace."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environ.update(COLUMNS="200", TIDINGS_REDIS_URL=redis_url, TIDINGS_NAMESPACE=namespace,
                   TIDINGS_HOME=str(home))
    return [str(TIDINGS), *args], environ


async def reports_lag(redis: Redis) -> bool:
    """Redis 7 reports each group's lag in XINFO GROUPS; 6.2 does not."""
    version = (await redis.info("server"))["redis_version"]
    return int(str(version).split(".")[0]) >= 7


def run(*args: str, **where: Any) -> subprocess.CompletedProcess[str]:
    argv, environ = tidings(*args, **where)
    result = subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
async def workload(redis_url: str, namespace: str, redis: Redis) -> list[str]:
    """40 orders over 2 partitions and two lanes; the group reads 7 and acks none, and 2
    entries went to the dead-letter stream of partition 1. Returns the lane streams."""
    app = App("obs")
    orders = app.topic(TOPIC, partitions=2)
    await app.start(Settings(redis_url=redis_url, namespace=namespace))
    try:
        await orders.send_many([{"n": n} for n in range(30)], key=lambda v: str(v["n"]))
        await orders.send_many([{"n": n} for n in range(10)], key=lambda v: str(v["n"]),
                               priority=Priority.HIGH)
    finally:
        await app.stop()
    lanes = [lane for p in range(2) for lane in PartitionKeys(namespace, TOPIC, p).lanes]
    for lane in lanes:
        await redis.xgroup_create(lane, GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "reader", {lanes[1]: ">"}, count=4)
    await redis.xreadgroup(GROUP, "reader", {lanes[3]: ">"}, count=3)
    dead = PartitionKeys(namespace, TOPIC, 1).dead
    await redis.xadd(dead, {"why": "test"})
    await redis.xadd(dead, {"why": "test"})
    return lanes


async def test_queues_json_numbers_equal_xlen_and_xpending(
    workload: list[str], redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    result = run("queues", "--json", redis_url=redis_url, namespace=namespace, home=tmp_path)

    document = orjson.loads(result.stdout)
    [row] = document["queues"]
    assert row["topic"] == TOPIC
    assert row["group"] == GROUP
    assert row["partitions"] == 2
    assert row["depth"] == sum([await redis.xlen(lane) for lane in workload]) == 40
    pending = [(await redis.xpending(lane, GROUP))["pending"] for lane in workload]
    assert row["pending"] == sum(pending) == 7
    assert row["lag"] == (40 - 7 if await reports_lag(redis) else None)
    assert row["dead"] == 2
    assert row["delayed"] == 0
    assert row["oldest_pending_age_s"] >= 0


async def test_queues_json_lists_every_lane_of_every_partition(
    workload: list[str], redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    result = run("queues", "--json", redis_url=redis_url, namespace=namespace, home=tmp_path)

    [topic] = orjson.loads(result.stdout)["topics"]
    lanes = {lane["stream"]: lane for p in topic["partitions"] for lane in p["lanes"]}
    assert sorted(lanes) == sorted(workload)
    for stream, lane in lanes.items():
        assert lane["length"] == await redis.xlen(stream)
        [group] = lane["groups"]
        assert group["pending"] == (await redis.xpending(stream, GROUP))["pending"]


async def test_queues_prints_a_table(
    workload: list[str], redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    result = run("queues", redis_url=redis_url, namespace=namespace, home=tmp_path)

    [line] = [line for line in result.stdout.splitlines() if TOPIC in line]
    lag = "33" if await reports_lag(redis) else "?"
    assert line.split() == [TOPIC, GROUP, "2", "40", "7", lag, "0", line.split()[7], "0", "2"]


async def test_queues_watch_refreshes_until_interrupted(
    workload: list[str], redis_url: str, namespace: str, tmp_path: Path
) -> None:
    argv, environ = tidings("queues", "--watch", "--json", redis_url=redis_url,
                            namespace=namespace, home=tmp_path)
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None  # stdout=PIPE
    seen = b""
    try:
        # Until the second snapshot: the CLI alone may take seconds to start on a busy machine.
        async with asyncio.timeout(30):
            while seen.count(b'"taken_ms"') < 2:
                chunk = await process.stdout.read(4096)
                if not chunk:  # it ended
                    break
                seen += chunk
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 10)

    assert (seen + rest).count(b'"taken_ms"') >= 2
    lines = [line for line in (seen + rest).splitlines() if line.strip()]
    assert all("taken_ms" in json.loads(line) for line in lines[:2]), "one object a line"
