"""/health/ready on real servers: 503 naming the failed check while PostgreSQL is unreachable
(through a TCP proxy we stop and start), 200 again once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import migrate
from tidings.database import create_engine, quote_ident
from tidings.observability.server import ObservabilityServer
from tidings.observability.sources import Sources
from tidings.tables import consumers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TIDINGS = Path(sys.executable).parent / "tidings"


class Proxy:
    """A TCP proxy to one upstream that can be stopped (connections cut) and started again."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            if isinstance(self.upstream, str):  # a unix socket (the embedded server)
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._pipes.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def direct(database_url: str, schema_name: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, schema=schema_name, pool_size=1, connect_timeout=5)
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name)} CASCADE"))
    await engine.dispose()


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(database_url)
    if parts.hostname:
        proxy = Proxy((parts.hostname, parts.port or 5432))
    else:  # the embedded server listens on a unix socket in the directory ?host= names
        socket_dir = parse_qs(parts.query)["host"][0]
        proxy = Proxy(f"{socket_dir}/.s.PGSQL.{parts.port or 5432}")
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def server(
    redis_url: str, database_url: str, schema_name: str, proxy: Proxy, namespace: str
) -> AsyncIterator[ObservabilityServer]:
    parts = urlsplit(database_url)
    if parts.hostname:
        proxied = parts._replace(netloc=parts.netloc.replace(
            f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname),
            f"127.0.0.1:{proxy.port}",
        )).geturl()
    else:
        proxied = f"postgresql://{parts.username}@127.0.0.1:{proxy.port}{parts.path}"
    engine = create_engine(proxied, schema=schema_name, pool_size=2, connect_timeout=1)
    client = Redis.from_url(redis_url)
    sources = Sources(redis=client, namespace=namespace, engine=engine, schema=schema_name,
                      heartbeat_window_s=60, check_timeout_s=2)
    async with ObservabilityServer(sources, CollectorRegistry()) as web:
        yield web
    await client.aclose()
    await engine.dispose()


async def heartbeat(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        group = await consumers.register_group(conn, "obs.jobs", "obs.work")
        await consumers.heartbeat(conn, instance_id="obs.work@test", group_id=group,
                                  hostname=socket.gethostname(), pid=os.getpid())


async def ready(web: ObservabilityServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{web.url}/health/ready")


async def test_ready_turns_503_with_a_reason_while_postgres_is_unreachable_and_200_after(
    server: ObservabilityServer, proxy: Proxy, direct: AsyncEngine, schema_name: str
) -> None:
    await migrate.upgrade(direct, schema_name)
    await heartbeat(direct)
    assert (await ready(server)).status_code == 200

    await proxy.stop()
    down = await ready(server)
    assert down.status_code == 503
    body = down.json()
    assert body["failed"] == ["postgresql", "migrations", "heartbeats"]
    assert "cannot reach PostgreSQL" in body["checks"]["postgresql"]["detail"]
    assert body["checks"]["redis"]["ok"] is True

    await proxy.start()
    back = await ready(server)
    assert back.status_code == 200, back.json()
    assert back.json()["failed"] == []


async def test_ready_names_pending_migrations(server: ObservabilityServer) -> None:
    reply = await ready(server)

    assert reply.status_code == 503
    assert reply.json()["failed"] == ["migrations", "heartbeats"]
    assert "run `tidings migrate`" in reply.json()["checks"]["migrations"]["detail"]


async def test_ready_fails_when_no_consumer_heartbeats(
    server: ObservabilityServer, direct: AsyncEngine, schema_name: str
) -> None:
    await migrate.upgrade(direct, schema_name)

    reply = await ready(server)

    assert reply.status_code == 503
    assert reply.json()["failed"] == ["heartbeats"]
    assert "no consumer instance has sent a heartbeat" in (
        reply.json()["checks"]["heartbeats"]["detail"]
    )


async def test_live_answers_while_everything_else_is_down(
    server: ObservabilityServer, proxy: Proxy
) -> None:
    await proxy.stop()
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{server.url}/health/live")

    assert reply.status_code == 200


async def test_tidings_serve_answers_until_sigterm(
    redis_url: str, database_url: str, namespace: str, schema_name: str, tmp_path: Path
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environ.update(TIDINGS_REDIS_URL=redis_url, TIDINGS_DATABASE_URL=database_url,
                   TIDINGS_NAMESPACE=namespace, TIDINGS_DATABASE_SCHEMA=schema_name,
                   TIDINGS_HOME=str(tmp_path))
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        str(TIDINGS), "serve", "--port", str(port), "--host", "127.0.0.1", env=environ,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = await _first_answer(http, f"http://127.0.0.1:{port}/metrics")
            ready = await http.get(f"http://127.0.0.1:{port}/health/ready")
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 15)

    assert metrics.status_code == 200
    assert "tidings_redis_up 1.0" in metrics.text
    assert ready.status_code == 503  # this schema was never migrated
    assert ready.json()["failed"] == ["migrations", "heartbeats"]
    assert code == 0


async def _first_answer(http: httpx.AsyncClient, url: str) -> httpx.Response:
    for _ in range(200):
        try:
            return await http.get(url)
        except httpx.ConnectError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answered at {url}")
