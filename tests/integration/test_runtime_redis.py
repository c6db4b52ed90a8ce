"""The runtime's behaviour suite on a real Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from runtime_behaviour import Connect, RuntimeBehaviour
from tidings.streams import RedisTransport

pytestmark = [pytest.mark.redis]


class TestRuntimeOnRedis(RuntimeBehaviour):
    @pytest.fixture
    async def connect(self, redis_url: str, namespace: str) -> AsyncIterator[Connect]:
        clients: list[Redis] = []

        def connect() -> RedisTransport:
            client = Redis.from_url(redis_url)
            clients.append(client)
            return RedisTransport(client)

        yield connect
        for client in clients:
            await client.aclose()
        async with Redis.from_url(redis_url) as admin:
            doomed = [key async for key in admin.scan_iter(match=f"{namespace}*", count=1000)]
            if doomed:
                await admin.delete(*doomed)
