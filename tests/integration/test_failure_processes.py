"""Failures that take a worker process down, on real Redis and PostgreSQL: a poison message
that kills its worker, and a worker killed between a provider call and the ack."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from processes import Servers, WorkerProcess, drop_schema
from tidings import App, Settings
from tidings.capture.http import HttpCapture
from tidings.capture.local import TWILIO_SID, TWILIO_TOKEN
from tidings.database import create_engine
from tidings.keys import PartitionKeys
from tidings.pipelines.notifications import build
from tidings.sinks.breaker import BreakerState, RedisBreakerStore

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
async def servers(redis_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[Servers]:
    suffix = uuid.uuid4().hex[:10]
    found = Servers(redis_url, database_url, f"tt-{suffix}", f"tt_{suffix}", tmp_path)
    yield found
    async with Redis.from_url(redis_url) as redis:
        doomed = [k async for k in redis.scan_iter(match=f"{found.namespace}*", count=1000)]
        if doomed:
            await redis.delete(*doomed)
    await drop_schema(found)


async def eventually(condition: Callable[[], Awaitable[bool]], within: float,
                     *workers: WorkerProcess) -> None:
    """Poll without blocking the event loop (the capture server runs on it)."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()}" for w in workers)
            raise AssertionError(f"not true after {within}s\n{logs}")
        await asyncio.sleep(0.05)


async def dead_entries(redis: Redis, keys: PartitionKeys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.dead)]


# -- a poison message that kills its worker ---------------------------------------------------


async def test_a_message_that_kills_its_worker_is_dead_lettered_and_the_rest_flow(
    servers: Servers,
) -> None:
    from pipelines.poison import AGENT, TOPIC, Job, processed_key

    producer = App("producer")
    jobs = producer.topic(TOPIC, model=Job, partitions=1)
    await producer.start(Settings(redis_url=servers.redis_url, namespace=servers.namespace),
                         database=False)
    try:
        await jobs.send(Job(n=0, poison=True), key="k")
        await jobs.send_many([Job(n=n) for n in range(1, 6)], key=lambda _: "k")
    finally:
        await producer.stop()
    keys = PartitionKeys(servers.namespace, TOPIC, 0)
    async with Redis.from_url(servers.redis_url) as redis:
        killed = 0
        worker = WorkerProcess(servers, "tests.pipelines.poison:app", "w0",
                               TIDINGS_MAX_DELIVERIES="2")
        try:
            deadline = time.monotonic() + 90
            while len(await redis.lrange(processed_key(servers.namespace), 0, -1)) < 5:
                assert time.monotonic() < deadline, worker.log()
                if worker.process.poll() is not None:  # the poison took it down: restart
                    assert worker.process.returncode == -signal.SIGKILL, worker.log()
                    killed += 1
                    assert killed <= 3, "the poison message was never parked"
                    worker.close()
                    worker = WorkerProcess(servers, "tests.pipelines.poison:app",
                                           f"w{killed}", TIDINGS_MAX_DELIVERIES="2")
                await asyncio.sleep(0.05)
            processed = await redis.lrange(processed_key(servers.namespace), 0, -1)
            [dead] = await dead_entries(redis, keys)
        finally:
            worker.close()
    assert killed == 2, "it was delivered max_deliveries (2) times, killing a worker each time"
    assert dead[b"dead.kind"] == b"poison"
    assert dead[b"dead.group"] == AGENT.encode()
    assert dead[b"dead.deliveries"] == b"3"
    assert processed == [str(n).encode() for n in range(1, 6)], "each once, in order"


# -- a worker killed between the provider call and the ack ------------------------------------


async def test_a_worker_killed_after_the_provider_call_never_sends_twice(
    servers: Servers,
) -> None:
    async with HttpCapture(twilio_credentials=(TWILIO_SID, TWILIO_TOKEN)) as capture:
        env = {"TIDINGS_TWILIO_BASE_URL": capture.url, "TIDINGS_TWILIO_ACCOUNT_SID": TWILIO_SID,
               "TIDINGS_TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TIDINGS_TWILIO_FROM": "+15005550006"}
        app_path = "tests.pipelines.killed_send:app"
        victim = WorkerProcess(servers, app_path, "victim", KILL_AFTER_SEND="1", **env)
        rescuer = None
        try:
            producer = build("producer")
            settings = Settings(redis_url=servers.redis_url, namespace=servers.namespace,
                                partitions=2)
            await producer.app.start(settings, database=False)
            try:
                msg_id = await producer.publish({
                    "type": "order.shipped", "channels": ["sms"],
                    "recipient": {"user_id": "u-1", "phone": "+14155550123"},
                    "content": {"body": "Order 7 is on its way"},
                })
            finally:
                await producer.app.stop()
            await eventually(lambda: _exited(victim), 60, victim)
            assert victim.process.returncode == -signal.SIGKILL
            assert len(capture.sms) == 1, "the provider accepted it before the kill"

            rescuer = WorkerProcess(servers, app_path, "rescuer", **env)
            await eventually(lambda: _is_dead(servers, msg_id), 60, rescuer)
            state = await _state_of(servers, msg_id)
        finally:
            victim.close()
            if rescuer is not None:
                rescuer.close()
    assert len(capture.sms) == 1, "the provider saw one send"
    assert state[0] == "dead"
    assert state[1].startswith("outcome unknown: the worker stopped while sending it")


async def _exited(worker: WorkerProcess) -> bool:
    return worker.process.poll() is not None


async def _state_of(servers: Servers, message_id: str) -> tuple[str, str]:
    engine = create_engine(servers.database_url, schema=servers.schema, pool_size=1,
                           connect_timeout=5)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT state, coalesce(last_error, '') FROM deliveries WHERE message_id = :m"
            ), {"m": message_id})).one_or_none()
            return ("", "") if row is None else (row[0], row[1])
    except ProgrammingError:  # the worker has not created the tables yet
        return ("", "")
    finally:
        await engine.dispose()


async def _is_dead(servers: Servers, message_id: str) -> bool:
    return (await _state_of(servers, message_id))[0] == "dead"


# -- a circuit breaker shared by two pipeline worker processes --------------------------------


async def _sent(servers: Servers, message_id: str) -> bool:
    return (await _state_of(servers, message_id))[0] == "sent"


async def test_the_pipeline_s_breaker_is_shared_by_its_workers_and_fails_over_and_back(
    servers: Servers,
) -> None:
    """Worker one opens the primary SMS account's breaker; worker two, which never called it,
    goes straight to the failover account; when the primary recovers, a half-open trial
    closes the breaker and traffic returns to it. Every notification is sent once."""
    min_calls = 4
    breaker = f'{{"min_calls": {min_calls}, "open_s": 8, "half_open_calls": 1}}'
    credentials = (TWILIO_SID, TWILIO_TOKEN)
    async with HttpCapture(twilio_credentials=credentials) as primary, \
            HttpCapture(twilio_credentials=credentials) as backup:
        primary.fault("sms", status=503, times=None)
        env = {"TIDINGS_TWILIO_BASE_URL": primary.url,
               "TIDINGS_TWILIO_FAILOVER_BASE_URL": backup.url,
               "TIDINGS_TWILIO_ACCOUNT_SID": TWILIO_SID, "TIDINGS_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
               "TIDINGS_TWILIO_FAILOVER_ACCOUNT_SID": TWILIO_SID,
               "TIDINGS_TWILIO_FAILOVER_AUTH_TOKEN": TWILIO_TOKEN,
               "TIDINGS_TWILIO_FROM": "+15005550006", "TIDINGS_BREAKER": breaker}
        app_path = "tidings.pipelines.notifications:app"
        producer = build("producer")
        await producer.app.start(Settings(redis_url=servers.redis_url,
                                          namespace=servers.namespace, partitions=2),
                                 database=False)
        workers: list[WorkerProcess] = []
        sent_ids: list[str] = []
        redis = Redis.from_url(servers.redis_url)
        store = RedisBreakerStore(redis, servers.namespace)

        async def send_one(n: int, worker: WorkerProcess) -> None:
            msg_id = await producer.publish({
                "type": "order.shipped", "channels": ["sms"],
                "recipient": {"user_id": f"u-{n}", "phone": f"+1415555{n:04d}"},
                "content": {"body": f"Order {n} is on its way"},
            })
            await eventually(lambda: _sent(servers, msg_id), 60, worker)
            sent_ids.append(msg_id)

        try:
            one = WorkerProcess(servers, app_path, "one", **env)
            workers.append(one)
            for n in range(min_calls + 2):  # one at a time: the breaker sees each answer
                await send_one(n, one)
            assert primary.counts.by_status == {503: min_calls}, "opened after min_calls"
            one.stop(signal.SIGTERM)
            assert await asyncio.to_thread(one.wait, 30) == 0

            two = WorkerProcess(servers, app_path, "two", **env)
            workers.append(two)
            for n in range(10, 13):
                await send_one(n, two)
            assert primary.counts.by_status == {503: min_calls}, "worker two found it open"

            primary.clear_faults()  # the primary recovers
            assert await store.state("twilio") == BreakerState.OPEN

            async def half_open() -> bool:  # open_s has passed: the next call is a trial
                return await store.state("twilio") == BreakerState.HALF_OPEN

            await eventually(half_open, 30, two)
            for n in range(20, 24):
                await send_one(n, two)
            assert await store.state("twilio") == BreakerState.CLOSED
        finally:
            await producer.app.stop()
            await redis.aclose()
            for worker in workers:
                worker.close()
        to_backup = len(backup.sms)
        to_primary = len(primary.sms)
    assert to_primary == 4, "the trial closed the breaker; traffic is back on the primary"
    assert to_backup == min_calls + 2 + 3, "everything else went to the failover account"
    assert len(sent_ids) == to_primary + to_backup, "each notification sent exactly once"
