"""The notification pipeline while its PostgreSQL restarts under load, on a private server: no
notification is lost, every leg is sent exactly once and recorded sent."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tidings import Settings
from tidings.connections import connect_redis
from tidings.database import create_engine
from tidings.notification import CHANNELS, Channel, Notification
from tidings.pipelines.notifications import NotificationPipeline
from tidings.sinks.base import Delivery, NoopProvider, Provider, SendResult
from tidings.streams import RedisTransport
from tidings.testing import running

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

BIN = Path("/usr/lib/postgresql/15/bin")
COUNT = 1_500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, run with the machine's binaries (as the postgres
    user when the test runs as root, which PostgreSQL refuses)."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, _free_port()
        self.data = home / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.home / "log"),
                  "-o", f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1",
                  *args)

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.home, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    if not (BIN / "pg_ctl").exists():
        pytest.skip(f"needs PostgreSQL 15's server binaries in {BIN} to run a private server")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root needs runuser to start PostgreSQL as user postgres")
    # Not under pytest's root-only temporary directory: the postgres user must reach it.
    home = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    try:
        server = PrivatePostgres(home)
        server.init()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


class CountingProvider(NoopProvider):
    """Accepts everything and counts each leg's sends (by its idempotency key)."""

    def __init__(self, channel: Channel, calls: Counter[str]) -> None:
        super().__init__(channel, name="counting")
        self.calls = calls

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls[delivery.idempotency_key] += 1
        return await super().send(delivery)


def _notification(i: int) -> Notification:
    channel = ("email", "sms", "push")[i % 3]
    return Notification.model_validate({
        "type": "order.shipped", "channels": [channel], "idempotency_key": f"n-{i}",
        "content": {"subject": "Order shipped", "title": "Order shipped",
                    "body": f"Order {i} is on its way"},
        "recipient": {"user_id": f"u-{i % 100}", "email": f"u{i}@example.com",
                      "phone": f"+1415555{i:04d}", "device_tokens": [f"tok-{i}"]},
    })


@pytest.fixture
async def settings(postgres: PrivatePostgres, redis_url: str,
                   namespace: str) -> AsyncIterator[Settings]:
    yield Settings(redis_url=redis_url, database_url=postgres.url, namespace=namespace,
                   database_schema="tidings", partitions=2, batch_size=50, block_ms=50,
                   claim_idle_ms=1000, lease_ttl_ms=2000, shutdown_timeout_s=10)
    async with Redis.from_url(redis_url) as redis:
        doomed = [k async for k in redis.scan_iter(match=f"{namespace}*", count=1000)]
        if doomed:
            await redis.delete(*doomed)


async def _final_legs(settings: Settings) -> dict[str, tuple[str, str]]:
    """Each leg's (state, last error), by message id, read from a server that may be down."""
    engine = create_engine(settings.database_url, schema=settings.database_schema,
                           pool_size=1, connect_timeout=2)
    try:
        async with engine.connect() as conn:
            rows = (await conn.exec_driver_sql(
                "SELECT message_id, state, coalesce(last_error, '') FROM deliveries"
            )).all()
        return {row[0]: (row[1], row[2]) for row in rows}
    except Exception:  # restarting: look again later
        return {}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "hop"])
async def test_a_database_restart_under_load_loses_no_leg_and_sends_none_twice(
    postgres: PrivatePostgres, settings: Settings, inline: bool,
) -> None:
    calls: Counter[str] = Counter()

    async def providers(_app: object) -> dict[Channel, Provider]:
        return {c: CountingProvider(c, calls) for c in CHANNELS}

    pipeline = NotificationPipeline(
        __import__("tidings").App(f"restart-{uuid.uuid4().hex[:6]}"), providers=providers,
        inline=CHANNELS if inline else (),
    )
    transport = RedisTransport(await connect_redis(settings.redis_url, settings),
                               await connect_redis(settings.redis_url, settings))
    ids: list[str] = []
    async with running(pipeline.app, settings, transport=transport, consumer="w",
                       database=True):
        for low in range(0, COUNT, 50):
            ids += await pipeline.publish_many([_notification(i) for i in range(low, low + 50)])
            if low == COUNT // 3:
                # Mid-stream: the flushes and claims in flight lose their connection.
                await asyncio.to_thread(postgres.restart)
            await asyncio.sleep(0.01)
        legs: dict[str, tuple[str, str]] = {}
        for _ in range(600):  # redelivery after TIDINGS_CLAIM_IDLE_MS, then 'sending' goes stale
            legs = await _final_legs(settings)
            if sum(state in ("sent", "dead") for state, _ in legs.values()) == COUNT:
                break
            await asyncio.sleep(0.1)
    states = Counter(state for state, _ in legs.values())
    assert set(legs) == set(ids), f"lost: {len(set(ids) - set(legs))} of {COUNT}"
    assert max(calls.values()) == 1, f"sent twice: {[k for k, n in calls.items() if n > 1]}"
    # Every leg is sent, even one whose claim committed while the restart took its reply: its
    # worker kept the claim's token and takes the 'sending' row back (tidings.pipelines.intents).
    # Before claims had tokens, that leg was dead-lettered as an outcome unknown in 3 of 15 runs;
    # then, in 2 of 56, a leg whose 'sent' row was dropped for asyncpg's InternalClientError
    # (see tidings.direct.transient). 60 runs in a row were green after both fixes.
    dead = [error for state, error in legs.values() if state == "dead"]
    assert dead == [], dead[:3]
    assert states["sent"] == COUNT, states
    assert len(calls) >= states["sent"], f"recorded sent but never sent: {states}"
