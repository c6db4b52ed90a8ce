"""An App gives back every Redis connection it opened when it stops."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tidings import App, Settings

pytestmark = [pytest.mark.redis]


async def connections_named(admin: Redis, name: str) -> int:
    return sum(1 for client in await admin.client_list() if client["name"] == name)


async def test_stopping_an_app_closes_its_redis_connections(
    redis_url: str, namespace: str
) -> None:
    separator = "&" if "?" in redis_url else "?"
    settings = Settings(redis_url=f"{redis_url}{separator}client_name={namespace}",
                        namespace=namespace)
    app = App("connections")
    async with Redis.from_url(redis_url) as admin:
        await app.start(settings)
        try:
            await asyncio.gather(*(app.transport.length(f"{namespace}:x") for _ in range(5)))
            assert await connections_named(admin, namespace) >= 1
        finally:
            await app.stop()
        # The server notices a closed socket a moment later.
        for _ in range(100):
            if await connections_named(admin, namespace) == 0:
                break
            await asyncio.sleep(0.05)
        assert await connections_named(admin, namespace) == 0
