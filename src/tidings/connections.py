"""Opening connections: embedded or configured URLs, pooling, reachability, Redis features."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import database
from tidings.errors import ConfigurationError, ConnectionFailed
from tidings.settings import Settings

MIN_REDIS = (6, 2)


async def resolve_redis_url(settings: Settings) -> str:
    """TIDINGS_REDIS_URL, or the embedded server's URL (started if it is not running)."""
    if settings.redis_url is not None:
        return settings.redis_url
    from tidings import embedded

    return (await asyncio.to_thread(embedded.start_redis, settings.home)).url


async def resolve_database_url(settings: Settings) -> str:
    """TIDINGS_DATABASE_URL, or the embedded server's URL (started if it is not running)."""
    if settings.database_url is not None:
        return settings.database_url
    from tidings import embedded

    return (await asyncio.to_thread(embedded.start_postgres, settings.home)).url


async def open_database(settings: Settings) -> AsyncEngine:
    """An engine on the configured (or embedded) PostgreSQL, checked with a query."""
    url = await resolve_database_url(settings)
    engine = database.create_engine(
        url, schema=settings.database_schema, pool_size=settings.database_pool_size,
        connect_timeout=settings.connect_timeout,
    )
    try:
        await database.ping(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


def redacted(url: str) -> str:
    """The URL without its password (after the user, or a ``password=`` option, as a unix
    socket URL carries it), fit for an error message or a log line."""
    parts = urlsplit(url)
    if parts.password:
        url = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@",
                                                                    ":***@")))
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


@dataclass(frozen=True)
class RedisFeatures:
    """What the connected server can do beyond the 6.2 floor (DESIGN.md D3)."""

    version: tuple[int, ...]
    xackdel: bool
    xadd_idmp: bool


async def connect_redis(url: str, settings: Settings) -> Redis:
    """A pooled client for ``url``, checked with PING; a clear error if it cannot work."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"TIDINGS_REDIS_URL {redacted(url)!r} is not a Redis URL: use redis://HOST:PORT/DB,"
            " rediss:// or unix:///path/redis.sock"
        )
    # The blocking read holds a connection for block_ms, so the socket timeout must exceed it.
    socket_timeout = settings.connect_timeout + settings.block_ms / 1000
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=settings.redis_pool_size,
            timeout=settings.connect_timeout,
            socket_connect_timeout=settings.connect_timeout,
            socket_timeout=socket_timeout,
        )
    except ValueError as exc:
        raise ConfigurationError(f"TIDINGS_REDIS_URL {redacted(url)!r}: {exc}") from None
    client = Redis(connection_pool=pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose(close_connection_pool=True)
        raise ConnectionFailed(
            f"cannot reach Redis at {redacted(url)}: {str(exc).rstrip('.')}. Check"
            " TIDINGS_REDIS_URL, or unset it"
            " to use the embedded server"
        ) from None
    return client


async def detect_features(client: Redis) -> RedisFeatures:
    info = await client.info("server")
    version = tuple(int(p) for p in str(info["redis_version"]).split(".")[:3])
    if version[:2] < MIN_REDIS:
        raise ConfigurationError(
            f"tidings needs Redis 6.2 or later; the server runs {info['redis_version']}"
        )
    return RedisFeatures(version=version, xackdel=version >= (8, 2), xadd_idmp=version >= (8, 6))
