"""The transport reads streams the same way whichever protocol (RESP2 / RESP3) the client
speaks: replies are parsed by tidings itself, not by redis-py."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tidings.streams import RedisTransport

pytestmark = [pytest.mark.redis]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_reads_return_entries_with_their_fields_in_either_protocol(
    redis_url: str, namespace: str, redis: Redis, protocol: int
) -> None:
    client = Redis.from_url(redis_url, protocol=protocol)
    blocking = Redis.from_url(redis_url, protocol=protocol)
    transport = RedisTransport(client, blocking)
    first, second = f"{namespace}:a", f"{namespace}:b"
    try:
        for stream in (first, second):
            await transport.create_group(stream, "g")
        [one] = await transport.add([(first, {b"e": b"1", b"d": b"x"})])

        entries = await transport.read("g", "c", [(first, 10), (second, 10)])
        assert [(e.stream, e.id, e.fields) for e in entries] == [
            (first, one, {b"e": b"1", b"d": b"x"})
        ]

        [two] = await transport.add([(second, {b"e": b"2", b"d": b"y"})])
        entries = await transport.read("g", "c", [(first, 10), (second, 10)], block_ms=200)
        assert [(e.stream, e.id, e.fields) for e in entries] == [
            (second, two, {b"e": b"2", b"d": b"y"})
        ]
        assert await transport.read("g", "c", [(first, 10), (second, 10)], block_ms=20) == []
    finally:
        await client.aclose()
        await blocking.aclose()


async def test_acks_sent_with_a_blocking_read_are_applied(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    client, blocking = Redis.from_url(redis_url), Redis.from_url(redis_url)
    transport = RedisTransport(client, blocking)
    stream = f"{namespace}:acked"
    try:
        await transport.create_group(stream, "g")
        first = await transport.add([(stream, {b"e": b"1"}), (stream, {b"e": b"2"})])
        assert len(await transport.read("g", "c", [(stream, 10)])) == 2

        # Nothing new: the read blocks its time out, the acks already applied.
        assert await transport.read("g", "c", [(stream, 10)], [(stream, first)],
                                    block_ms=50) == []
        assert (await redis.xpending(stream, "g"))["pending"] == 0
    finally:
        await client.aclose()
        await blocking.aclose()
