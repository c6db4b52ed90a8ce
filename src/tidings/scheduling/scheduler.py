"""The scheduler loop: tick, relay the outbox, sleep until the next schedule is due.

Run as many schedulers as you like (``tidings schedules run``): ticks share the due schedules
through row locks and every relay drains every scheduler's outbox rows, so any one of them
may die at any moment without losing or duplicating a fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from datetime import datetime, timedelta

from redis.exceptions import BusyLoadingError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.app import App
from tidings.connections import open_database
from tidings.direct import transient
from tidings.migrate import check_current, upgrade
from tidings.observability.scheduling import SchedulerMetrics
from tidings.scheduling.relay import Checkpoint, Relay
from tidings.scheduling.tick import TickResult, tick
from tidings.settings import Settings

log = logging.getLogger("tidings.scheduling")

_UNTIL_DUE = text(
    "SELECT extract(epoch FROM min(next_fire_at) - now()) FROM schedules WHERE state = 'active'"
)


# Redis read-only (a replica, mid-failover), loading its data or asking to try again: each
# passes, as a lost connection does.
_TRANSIENT = (
    OSError, OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError,
    ReadOnlyError, BusyLoadingError, TryAgainError,
)


def hiccup(exc: BaseException) -> bool:
    """Whether ``exc`` is a database or Redis hiccup (logged and retried), not a bug.

    SQLAlchemy reports asyncpg's InternalClientError — a connection whose session a restart
    ended mid-call — as an InternalError; its cause says what it is (tidings.direct)."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or (exc.orig is not None and transient(exc.orig.__cause__
                                                                         or exc.orig)))


class Scheduler:
    """Fires due schedules of ``engine``'s schema into ``app``'s Redis.

    ``checkpoint`` is awaited inside a tick's transaction once its fires are written, and
    inside a relay's once its batch is published: a seam for crash tests, None otherwise.
    ``metrics`` counts the fires and their lateness (a fresh one if not given).
    """

    def __init__(
        self,
        app: App,
        engine: AsyncEngine,
        *,
        name: str | None = None,
        batch: int = 1000,
        poll_s: float = 1.0,
        grace: timedelta = timedelta(seconds=60),
        checkpoint: Checkpoint | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.poll_s = poll_s
        self.grace = grace
        self.checkpoint = checkpoint
        self.relay = Relay(app, engine, checkpoint=checkpoint)
        self.fired = 0
        self.metrics = metrics or SchedulerMetrics()

    async def tick(self, as_of: datetime | None = None) -> TickResult:
        """Claim and fire one batch of due schedules, in one transaction."""
        async with self.engine.begin() as conn:
            result = await tick(
                conn, scheduler=self.name, limit=self.batch, grace=self.grace, as_of=as_of
            )
            if result.claimed and self.checkpoint is not None:
                await self.checkpoint("tick")
        self.fired += result.fired
        for late_ms in result.lateness_ms:
            self.metrics.fired(late_ms / 1000)
        if result.fired:
            log.info(
                "%s fired %d tick(s) of %d schedule(s), lateness max %.0f ms",
                self.name, result.fired, result.claimed, max(result.lateness_ms),
            )
        return result

    async def step(self, as_of: datetime | None = None) -> TickResult:
        """One tick, then relay everything in the outbox."""
        result = await self.tick(as_of)
        await self.relay.drain()
        return result

    async def seconds_until_due(self) -> float:
        """How long until the next active schedule is due, by the database clock, capped."""
        async with self.engine.connect() as conn:
            wait = (await conn.execute(_UNTIL_DUE)).scalar()
        if wait is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, float(wait)))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; database hiccups are logged and retried."""
        log.info("scheduler %s running (batch %d, poll %.2fs)", self.name, self.batch, self.poll_s)
        while not stop.is_set():
            try:
                result = await self.step()
                if result.claimed >= self.batch:
                    continue  # more is due right now
                delay = await self.seconds_until_due()
            except Exception as exc:
                if not hiccup(exc):
                    raise
                log.warning("scheduler %s: %s; retrying", self.name, exc)
                delay = self.poll_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        log.info("scheduler %s stopped after %d fire(s)", self.name, self.fired)


async def serve(
    settings: Settings, *, name: str | None = None, batch: int = 1000, poll_s: float = 1.0,
    grace_s: float = 60.0, migrate: bool = True, checkpoint: Checkpoint | None = None,
    http_port: int | None = None, http_host: str = "0.0.0.0",
) -> None:
    """Connect, migrate (or check), and run one scheduler until SIGTERM or SIGINT; with
    ``http_port``, serve its /metrics (lateness, fires) and /health/* meanwhile."""
    app = App("scheduler")
    await app.start(settings)
    try:
        engine = await open_database(settings)
        try:
            if migrate:
                await upgrade(engine, settings.database_schema)
            else:
                await check_current(engine, settings.database_schema)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            scheduler = Scheduler(
                app, engine, name=name, batch=batch, poll_s=poll_s,
                grace=timedelta(seconds=grace_s), checkpoint=checkpoint,
            )
            web = None
            if http_port is not None:
                from prometheus_client import CollectorRegistry

                from tidings.observability.server import ObservabilityServer
                from tidings.observability.sources import Sources

                sources = Sources.from_app(app, agents=[], collectors=[scheduler.metrics])
                web = ObservabilityServer(sources, CollectorRegistry(), host=http_host,
                                          port=http_port)
                await web.start()
            try:
                await scheduler.run(stop)
            finally:
                if web is not None:
                    await web.stop()
        finally:
            await engine.dispose()
    finally:
        await app.stop()
