"""The HTTP endpoints: ``/metrics``, ``/health/live`` and ``/health/ready``, on the caller's loop.

`tidings serve` runs them alone; a worker started with an HTTP port runs them beside its agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from types import TracebackType

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings import database
from tidings.connections import connect_redis, resolve_database_url, resolve_redis_url
from tidings.errors import ConfigurationError, TidingsError
from tidings.observability.health import check_ready
from tidings.observability.metrics import Metrics
from tidings.observability.sources import Sources
from tidings.settings import Settings

log = logging.getLogger("tidings.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process (a worker, `tidings serve`) owns SIGINT / SIGTERM, not this server.
        yield


class ObservabilityServer:
    """Serves the endpoints over ``sources`` on ``host:port`` (0 picks a free port)."""

    def __init__(
        self, sources: Sources, registry: CollectorRegistry, *, host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.sources = sources
        self.metrics = Metrics(sources, registry)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[
            Route("/metrics", self._metrics),
            Route("/health/live", self._live),
            Route("/health/ready", self._ready),
        ])

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"

    async def _metrics(self, request: Request) -> Response:
        return Response(await self.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def _ready(self, request: Request) -> Response:
        readiness = await check_ready(self.sources)
        return JSONResponse(readiness.as_dict(), 200 if readiness.ok else 503)

    async def start(self) -> ObservabilityServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigurationError(
                f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror}; pick another port"
            ) from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, ws="none", timeout_graceful_shutdown=2)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise TidingsError(f"the HTTP server on {self.url} stopped while starting")
            await asyncio.sleep(0.005)
        log.info("serving /metrics, /health/live and /health/ready on %s", self.url)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # keep-alive scrapers need not be waited for
            await self._task
            self._server = self._task = None
        self.metrics.close()

    async def __aenter__(self) -> ObservabilityServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def serve_command(settings: Settings, host: str, port: int, console: Console) -> None:
    """`tidings serve`: the endpoints over the configured servers until SIGTERM / SIGINT.

    PostgreSQL is not required at start: while it is down, ``/health/ready`` says so.
    """
    client = await connect_redis(await resolve_redis_url(settings), settings)
    engine = database.create_engine(
        await resolve_database_url(settings), schema=settings.database_schema, pool_size=2,
        connect_timeout=settings.connect_timeout,
    )
    sources = Sources(
        redis=client, namespace=settings.namespace, engine=engine,
        schema=settings.database_schema, redis_pools={"main": client.connection_pool},
        heartbeat_window_s=3 * settings.heartbeat_interval_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ObservabilityServer(sources, CollectorRegistry(), host=host, port=port) as web:
            console.print(f"serving /metrics, /health/live and /health/ready on {web.url}")
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await client.aclose(close_connection_pool=True)
        await engine.dispose()
