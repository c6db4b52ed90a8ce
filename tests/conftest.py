"""Shared fixtures: real servers from TIDINGS_TEST_* variables, else the embedded ones."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.direct import DirectPool


def _embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One embedded home per test session keeps the servers shared by every test in it.
    home = os.environ.get("TIDINGS_TEST_HOME")
    if home:
        return Path(home)
    return Path(tmp_path_factory.getbasetemp()) / "tidings-home"


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = _embedded_home(tmp_path_factory)
    home.mkdir(parents=True, exist_ok=True)
    yield home
    if not os.environ.get("TIDINGS_TEST_HOME"):
        from tidings import embedded

        embedded.stop_all(home)


@pytest.fixture(scope="session")
def redis_url(embedded_home: Path) -> str:
    url = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if url:
        return url
    from tidings import embedded

    return embedded.start_redis(embedded_home).url


@pytest.fixture(scope="session")
def database_url(embedded_home: Path) -> str:
    url = os.environ.get("TIDINGS_TEST_DATABASE_URL")
    if url:
        return url
    from tidings import embedded

    return embedded.start_postgres(embedded_home).url


@pytest.fixture
def namespace() -> str:
    """A Redis key prefix of its own for each test, so tests never see each other's keys."""
    return f"tt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    """An async client on the test Redis; every key of the test's namespace goes at teardown."""
    client = Redis.from_url(redis_url)
    yield client
    doomed = [key async for key in client.scan_iter(match=f"{namespace}*", count=1000)]
    if doomed:
        await client.delete(*doomed)
    await client.aclose()


@pytest.fixture
def schema_name() -> str:
    """A PostgreSQL schema of its own for each test that writes tables."""
    return f"tt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def engine(database_url: str, schema_name: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a schema of its own with every migration applied; dropped afterwards."""
    from tidings.database import create_engine, quote_ident
    from tidings.migrate import upgrade

    engine = create_engine(database_url, schema=schema_name, pool_size=4, connect_timeout=5)
    await upgrade(engine, schema_name)
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name)} CASCADE"))
    await engine.dispose()


@pytest.fixture
def env(database_url: str, redis_url: str, schema_name: str,
        namespace: str) -> Iterator[dict[str, str]]:
    """The TIDINGS_* environment of a CLI run: a migrated schema and a Redis key prefix of its
    own, both removed afterwards (for CliRunner, which runs its own event loops)."""
    from redis import Redis as SyncRedis

    from tidings.database import create_engine, quote_ident
    from tidings.migrate import upgrade

    async def migrate(drop: bool) -> None:
        engine = create_engine(database_url, schema=schema_name, pool_size=1, connect_timeout=5)
        try:
            if drop:
                async with engine.begin() as conn:
                    await conn.execute(text(f"DROP SCHEMA {quote_ident(schema_name)} CASCADE"))
            else:
                await upgrade(engine, schema_name)
        finally:
            await engine.dispose()

    asyncio.run(migrate(drop=False))
    yield {
        "TIDINGS_DATABASE_URL": database_url, "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_DATABASE_SCHEMA": schema_name, "TIDINGS_NAMESPACE": namespace,
        "COLUMNS": "250",
    }
    asyncio.run(migrate(drop=True))
    with SyncRedis.from_url(redis_url) as client:
        doomed = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if doomed:
            client.delete(*doomed)


@pytest.fixture
async def direct(engine: AsyncEngine) -> AsyncIterator[DirectPool]:
    """asyncpg connections to the test's schema, as the pipeline's ledger writes through."""
    pool = DirectPool.of(engine)
    yield pool
    await pool.aclose()
