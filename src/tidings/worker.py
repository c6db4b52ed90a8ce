"""The worker process: runs an App's agents, heartbeats, and shuts down gracefully on signals.

SIGTERM or SIGINT: stop reading, let in-flight batches finish within the shutdown deadline,
ack what finished, hand the rest back as immediately reclaimable, exit 0. A second signal
cancels in-flight work at once (unfinished messages are still handed back, never lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError

from tidings.app import App
from tidings.errors import ConfigurationError
from tidings.ownership import PartitionOwner
from tidings.parking import Parking
from tidings.retry import load_queue_policies
from tidings.settings import Settings
from tidings.streams import RedisTransport
from tidings.tasks import being_cancelled

if TYPE_CHECKING:
    from tidings.dlq import DeadLetterRecorder
    from tidings.observability.server import ObservabilityServer

log = logging.getLogger("tidings.worker")


def consumer_name(name: str) -> str:
    """Unique per process: several workers may share a name, never a host and pid."""
    return f"{name}-{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs the agents of one App in this process until stopped."""

    def __init__(
        self,
        app: App,
        settings: Settings,
        *,
        name: str = "worker",
        concurrency: int | None = None,
        agents: list[str] | None = None,
        database: bool = True,
        migrate: bool = True,
        http_port: int | None = None,
        http_host: str = "0.0.0.0",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not app.agents:
            raise ConfigurationError(f"app {app.name!r} declares no agents: nothing to run")
        unknown = sorted(set(agents or ()) - set(app.agents))
        if unknown:
            raise ConfigurationError(
                f"app {app.name!r} has no agent {', '.join(unknown)} (it has:"
                f" {', '.join(sorted(app.agents))})"
            )
        self.app = app
        self.settings = settings
        self.consumer = consumer_name(name)
        self.database = database
        self.migrate = migrate
        # With a port, /metrics and /health/* are served while the worker runs (0: any port).
        self.http_port = http_port
        self.http_host = http_host
        self.registry = registry
        self.http: ObservabilityServer | None = None
        self.agents = [a for n, a in app.agents.items() if not agents or n in agents]
        if concurrency is not None:
            for agent in self.agents:
                agent.concurrency = concurrency
        self.owners: list[PartitionOwner] = []
        self._stop = asyncio.Event()
        self._signals = 0
        self._group_ids: dict[str, int] = {}
        self.recorder: DeadLetterRecorder | None = None
        self._recording: asyncio.Task[None] | None = None
        self._unparking: asyncio.Task[None] | None = None
        # Moves far-off retries to PostgreSQL and back (with a database only).
        self.parking: Parking | None = None

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping: finishing in-flight work (send the signal again to cancel it)")
            self._stop.set()
        else:
            log.warning("second signal: cancelling in-flight work")
            for owner in self.owners:
                owner.cancel_now()

    async def run(self) -> None:
        """Start, consume until a stop is requested, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.app.start(self.settings, database=self.database)
            try:
                await self._serve()
            finally:
                await self.app.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        if self.database:
            await self._prepare_database()
            queues = await load_queue_policies(self.app.engine)
            policies = self.app.retry_policies
            self.app.retry_policies = replace(policies, by_queue={**policies.by_queue, **queues})
            self.parking = Parking(self.app.engine, park_after_s=self.settings.park_after_s)
        self.owners = [
            PartitionOwner(agent, self.consumer, self.app.transport, self.settings)
            for agent in self.agents
        ]
        for owner in self.owners:
            await owner.start()
        heartbeat = asyncio.create_task(self._heartbeat()) if self.database else None
        self._start_background()
        log.info("worker %s consuming %s", self.consumer, ", ".join(a.name for a in self.agents))
        try:
            if self.http_port is not None:
                await self._serve_http(self.http_port)
            await self._stop.wait()
        finally:
            await self._shutdown(heartbeat)
            if self.http is not None:
                await self.http.stop()

    async def _serve_http(self, port: int) -> None:
        from tidings.observability.server import ObservabilityServer
        from tidings.observability.sources import Sources

        sources = Sources.from_app(self.app, agents=self.agents, owners=lambda: self.owners)
        registry = self.registry if self.registry is not None else CollectorRegistry()
        self.http = ObservabilityServer(sources, registry, host=self.http_host, port=port)
        await self.http.start()

    def _start_background(self) -> None:
        """Bring parked retries back when due, and copy dead letters into PostgreSQL (every
        worker with a database does both)."""
        transport = self.app.transport
        if self.parking is not None:
            self._unparking = asyncio.create_task(
                self.parking.run(transport, self._delay_sets), name="park-retries")
        if not self.database or not isinstance(transport, RedisTransport):
            return
        from tidings.dlq import DeadLetterRecorder

        self.recorder = DeadLetterRecorder(transport.client, self.app.engine,
                                           self.settings.namespace, consumer=self.consumer)
        self._recording = asyncio.create_task(self.recorder.run(), name="dlq-recorder")

    def _delay_sets(self) -> list[str]:
        """The delay sets of this worker's agents, every partition (read each round: a
        topic's partition count is known once the app started)."""
        return [agent.topic.keys(p).delayed(agent.group) for agent in self.agents
                for p in range(agent.topic.partitions)]

    async def _stop_background(self) -> None:
        if self.parking is not None and self._unparking is not None:
            self.parking.stop()
            # A database that hangs (a lock, a partition) must not hold the stop for ever; a
            # round cut short is finished by the next worker (park and unpark are idempotent).
            try:
                await asyncio.wait_for(self._unparking, self.settings.shutdown_timeout_s)
            except TimeoutError:
                log.warning("parked retries were still being moved at the deadline; the next"
                            " worker finishes the round")
        if self.recorder is None or self._recording is None:
            return
        self.recorder.stop()
        try:
            await asyncio.wait_for(self._recording, self.settings.shutdown_timeout_s)
        except TimeoutError:
            log.warning("the dead-letter recorder did not stop in time; what it had not"
                        " recorded is recorded by the next worker")

    async def _shutdown(self, heartbeat: asyncio.Task[None] | None) -> None:
        await asyncio.shield(asyncio.gather(*(owner.stop() for owner in self.owners)))
        await self._stop_background()
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            try:
                await asyncio.wait_for(asyncio.shield(self._mark_stopped()),
                                       self.settings.shutdown_timeout_s)
            except TimeoutError:
                log.warning("could not record the stop in time; the heartbeat lapses instead")
        log.info("worker %s stopped", self.consumer)

    def instance_id(self, agent_name: str) -> str:
        return f"{agent_name}@{self.consumer}"

    async def _prepare_database(self) -> None:
        from tidings import migrate

        if self.migrate:
            await migrate.upgrade(self.app.engine, self.settings.database_schema)
        else:
            await migrate.check_current(self.app.engine, self.settings.database_schema)
        await self._register_groups()

    async def _register_groups(self) -> None:
        from tidings.tables import consumers

        async with self.app.engine.begin() as conn:
            for agent in self.agents:
                self._group_ids[agent.name] = await consumers.register_group(
                    conn, agent.topic.name, agent.group
                )

    async def _heartbeat(self) -> None:
        from tidings.tables import consumers

        while True:
            try:
                async with self.app.engine.begin() as conn:
                    for agent in self.agents:
                        await consumers.heartbeat(
                            conn, instance_id=self.instance_id(agent.name),
                            group_id=self._group_ids[agent.name],
                            hostname=socket.gethostname(), pid=os.getpid(),
                        )
            except Exception as exc:  # PostgreSQL away: keep consuming, keep trying
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                log.error("heartbeat failed: %s: %s", type(exc).__name__, exc)
                if isinstance(exc, IntegrityError):  # a group's row was deleted (by hand)
                    with suppress(Exception):
                        await self._register_groups()
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _mark_stopped(self) -> None:
        from tidings.tables import consumers

        with suppress(Exception):
            async with self.app.engine.begin() as conn:
                for agent in self.agents:
                    await consumers.mark_stopped(conn, self.instance_id(agent.name))
