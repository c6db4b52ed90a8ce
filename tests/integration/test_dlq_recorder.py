"""The dead-letter recorder against real Redis and PostgreSQL: once, grouped, trimmed safely."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import keys
from tidings.dlq.recorder import GROUP, DeadLetterRecorder
from tidings.keys import PartitionKeys
from tidings.message import Envelope, now_ms
from tidings.tables.dead_letters import dead_letters

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def recorder(redis: Redis, engine: AsyncEngine, namespace: str, name: str = "r1",
             **options: float) -> DeadLetterRecorder:
    return DeadLetterRecorder(redis, engine, namespace, consumer=name, **options)  # type: ignore[arg-type]


async def park(redis: Redis, namespace: str, topic: str = "sms", partition: int = 0, *,
               reason: str = "provider timed out after 30s", kind: str = "exhausted",
               error_type: str | None = "TimeoutError", payload: bytes = b'{"to": "u-1"}',
               envelope: bytes | None = None) -> bytes:
    """XADD one dead-stream entry of the consumer's contract; register its topic."""
    await redis.hsetnx(keys.topic_registry(namespace), topic, 2)
    header = envelope if envelope is not None else Envelope("m-1", attempt=3).to_json()
    fields = {b"e": header, b"d": payload, b"dead.kind": kind.encode(),
              b"dead.reason": reason.encode(), b"dead.stream": b"src", b"dead.id": b"1-1",
              b"dead.group": b"send-sms", b"dead.deliveries": b"1", b"dead.attempts": b"3",
              b"dead.at_ms": str(now_ms()).encode()}
    if error_type is not None:
        fields[b"dead.error_type"] = error_type.encode()
    return bytes(await redis.xadd(PartitionKeys(namespace, topic, partition).dead, fields))  # type: ignore[arg-type]


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(dead_letters)
        return int((await conn.execute(query)).scalar_one())


async def test_every_dead_stream_entry_is_recorded_once_across_runs_and_recorders(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    for partition in (0, 1, 0):
        await park(redis, namespace, partition=partition)
    first, second = recorder(redis, engine, namespace, "a"), recorder(redis, engine, namespace, "b")

    written = [await first.record_once(), await second.record_once(), await first.record_once()]
    await park(redis, namespace, topic="email")
    written.append(await second.record_once())

    assert written == [3, 0, 0, 1]
    assert await count(engine) == 4


async def test_a_row_keeps_the_envelope_payload_and_where_it_came_from(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    envelope = Envelope("m-7", key="u-1", attempt=3, headers={"tenant": "acme"})
    entry_id = await park(redis, namespace, partition=1, envelope=envelope.to_json())
    await recorder(redis, engine, namespace).record_once()

    async with engine.connect() as conn:
        row = (await conn.execute(select(dead_letters))).one()
    assert (row.topic, row.partition, row.group_name) == ("sms", 1, "send-sms")
    assert (row.dead_stream, row.dead_entry_id) == (
        PartitionKeys(namespace, "sms", 1).dead, entry_id.decode()
    )
    assert (row.message_id, row.key, row.kind, row.attempts) == ("m-7", "u-1", "exhausted", 3)
    assert (row.error_type, row.error_message) == ("TimeoutError", "provider timed out after 30s")
    assert row.envelope == envelope.to_json()
    assert row.payload == b'{"to": "u-1"}'
    assert row.headers == {"tenant": "acme"}


async def test_similar_errors_share_a_fingerprint_and_different_ones_do_not(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    await park(redis, namespace, reason="user 42 timed out after 30s")
    await park(redis, namespace, reason="user 977 timed out after 12s")
    await park(redis, namespace, reason="template welcome missing")
    await recorder(redis, engine, namespace).record_once()

    async with engine.connect() as conn:
        prints = (await conn.execute(select(dead_letters.c.fingerprint)
                                     .order_by(dead_letters.c.id))).scalars().all()
    assert prints[0] == prints[1] != prints[2]


async def test_an_undecodable_entry_is_recorded_with_its_bytes(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    await redis.hsetnx(keys.topic_registry(namespace), "sms", 1)
    dead = PartitionKeys(namespace, "sms", 0).dead
    await redis.xadd(dead, {b"e": b"\xff\xfe not json", b"dead.kind": b"invalid",
                            b"dead.reason": b"unreadable envelope header"})
    await redis.xadd(dead, {b"junk": b"\x00"})  # not even the contract's fields

    assert await recorder(redis, engine, namespace).record_once() == 2
    async with engine.connect() as conn:
        rows = (await conn.execute(select(dead_letters).order_by(dead_letters.c.id))).all()
    assert [(r.kind, r.message_id, r.envelope) for r in rows] == [
        ("invalid", None, b"\xff\xfe not json"), ("invalid", None, None)
    ]


async def test_entries_a_dead_recorder_left_pending_are_reclaimed(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    await park(redis, namespace)
    dead = PartitionKeys(namespace, "sms", 0).dead
    await redis.xgroup_create(dead, GROUP, id="0")
    await redis.xreadgroup(GROUP, "crashed", {dead: ">"})  # read, never recorded nor acked

    assert await recorder(redis, engine, namespace, claim_idle_ms=0).record_once() == 1
    assert (await redis.xpending(dead, GROUP))["pending"] == 0


async def test_trim_drops_recorded_old_entries_only(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    for _ in range(3):
        await park(redis, namespace)
    dead = PartitionKeys(namespace, "sms", 0).dead
    keeper = recorder(redis, engine, namespace, keep_s=0)
    await keeper.record_once()
    unrecorded = await park(redis, namespace)

    assert await keeper.trim() == 3
    assert [entry_id for entry_id, _ in await redis.xrange(dead)] == [unrecorded]


async def test_trim_keeps_recorded_entries_inside_the_retention_window(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    await park(redis, namespace)
    keeper = recorder(redis, engine, namespace, keep_s=3600)
    await keeper.record_once()

    assert await keeper.trim() == 0
    assert await redis.xlen(PartitionKeys(namespace, "sms", 0).dead) == 1


async def test_run_records_until_stopped(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    import asyncio

    keeper = recorder(redis, engine, namespace, poll_s=0.05)
    task = asyncio.create_task(keeper.run())
    await park(redis, namespace, payload=orjson.dumps({"n": 1}))
    for _ in range(200):
        if keeper.recorded:
            break
        await asyncio.sleep(0.05)
    keeper.stop()
    await asyncio.wait_for(task, 10)
    assert await count(engine) == 1


async def test_trim_keeps_an_entry_read_but_not_yet_recorded(
    redis: Redis, engine: AsyncEngine, namespace: str
) -> None:
    await park(redis, namespace)
    dead = PartitionKeys(namespace, "sms", 0).dead
    await redis.xgroup_create(dead, GROUP, id="0")
    await redis.xreadgroup(GROUP, "crashed", {dead: ">"})  # pending with a recorder that died
    keeper = recorder(redis, engine, namespace, keep_s=0)  # reclaims only after 60 s idle
    await keeper.record_once()

    assert await keeper.trim() == 0
    assert await redis.xlen(dead) == 1
