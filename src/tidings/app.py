"""The App: declarations (topics, agents) plus the connections they run on, with a lifecycle."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import keys
from tidings.agent import Agent, Handler
from tidings.connections import (
    RedisFeatures,
    connect_redis,
    detect_features,
    open_database,
    resolve_redis_url,
)
from tidings.errors import ConfigurationError, TidingsError, UnknownTopic
from tidings.retry import RetryPolicies, RetryPolicy
from tidings.settings import Settings
from tidings.streams import RedisTransport
from tidings.topic import Topic
from tidings.transport import Transport

T = TypeVar("T")
MAX_TOPIC = 200
Hook = Callable[["App"], Awaitable[None]]
log = logging.getLogger("tidings.app")


class App:
    """Topics and agents of one pipeline, and the Redis / PostgreSQL connections they use.

    Declaring does no I/O, so a module may define its App at import time; ``start`` (or
    ``async with app``) connects, using the settings passed to it or to the constructor.
    """

    def __init__(self, name: str, *, settings: Settings | None = None) -> None:
        self.name = name
        self.topics: dict[str, Topic[Any]] = {}
        self.agents: dict[str, Agent[Any]] = {}
        self._settings = settings
        self._transport: Transport | None = None
        self._engine: AsyncEngine | None = None
        self.redis_url: str | None = None
        self.features: RedisFeatures | None = None
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        # The default and per-queue / per-type policies; the worker adds the queues' policies
        # from PostgreSQL when it starts.
        self.retry_policies = RetryPolicies()

    def __repr__(self) -> str:
        return f"App({self.name!r}, topics={list(self.topics)}, agents={list(self.agents)})"

    # -- declaring ------------------------------------------------------------------------

    def topic(
        self, name: str, *, model: type[T] | None = None, partitions: int | None = None
    ) -> Topic[T]:
        """Declare a topic; ``model`` (a pydantic model) validates every message sent to it."""
        if name in self.topics:
            raise ConfigurationError(f"topic {name!r} is declared twice in app {self.name!r}")
        if not name or any(c in name for c in "{}: \n"):
            raise ConfigurationError(f"topic name {name!r} may not contain braces, ':' or spaces")
        if len(name) > MAX_TOPIC:
            # Its streams' keys are in indexed ledger and dead-letter columns.
            raise ConfigurationError(f"topic name {name[:40]!r}… has {len(name)} characters;"
                                     f" a topic name has at most {MAX_TOPIC}")
        topic: Topic[T] = Topic(self, name, model, partitions or 0)
        self.topics[name] = topic
        return topic

    def agent(
        self, topic: Topic[Any], *, name: str | None = None, concurrency: int = 1,
        batch: bool = False, retry: RetryPolicy | None = None,
    ) -> Callable[[Handler], Agent[Any]]:
        """Decorate ``async def handler(message)`` to consume ``topic`` as a consumer group.

        With ``batch=True`` the handler is ``async def handler(batch: Batch)`` instead.
        ``retry`` overrides the queue's retry policy for this agent.
        """
        if topic.app is not self:
            raise ConfigurationError(f"{topic!r} belongs to another app")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")

        def register(handler: Handler) -> Agent[Any]:
            agent_name = name or f"{handler.__module__}.{handler.__qualname__}"
            if agent_name in self.agents:
                raise ConfigurationError(f"agent {agent_name!r} is declared twice")
            agent: Agent[Any] = Agent(agent_name, topic, handler, concurrency, batch, retry)
            self.agents[agent_name] = agent
            return agent

        return register

    def retry_policy(self, agent: Agent[Any], type: str | None = None) -> RetryPolicy:
        """The policy for ``agent``'s failures: the message type's, the agent's own, its
        queue's (``queue_configs``, loaded by the worker) or the default, in that order."""
        if agent.retry is not None and type is None:
            return agent.retry
        policies = self.retry_policies
        if agent.retry is not None:
            policies = replace(policies, by_agent={**policies.by_agent, agent.name: agent.retry})
        return policies.for_message(topic=agent.topic.name, agent=agent.name, type=type)

    def on_start(self, hook: Hook) -> Hook:
        """Run ``hook(app)`` once connections are open (build services that need them)."""
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run ``hook(app)`` before connections close (flush buffers, close clients)."""
        self._on_stop.append(hook)
        return hook

    def get_topic(self, name: str) -> Topic[Any]:
        try:
            return self.topics[name]
        except KeyError:
            known = ", ".join(sorted(self.topics)) or "none"
            raise UnknownTopic(
                f"app {self.name!r} has no topic {name!r} (it has: {known})"
            ) from None

    # -- running --------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise TidingsError(f"app {self.name!r} has no settings: pass them to App() or start()")
        return self._settings

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise TidingsError(f"app {self.name!r} is not started: use `async with app:`")
        return self._transport

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise TidingsError(f"app {self.name!r} has no database: start it with database=True")
        return self._engine

    @property
    def has_database(self) -> bool:
        return self._engine is not None

    @property
    def started(self) -> bool:
        return self._transport is not None

    async def start(
        self,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        database: bool = False,
    ) -> None:
        """Connect. ``transport`` replaces Redis (tests); ``database`` also opens PostgreSQL."""
        if settings is not None:
            self._settings = settings
        settings = self.settings
        for topic in self.topics.values():
            topic.bind(topic.partitions or settings.partitions)
        if transport is None:
            transport = await self._open_redis(settings)
        self._transport = transport
        try:
            await self._register_topics()
            if database:
                await self._open_database(settings)
            for hook in self._on_start:
                await hook(self)
        except BaseException:
            await self.stop()
            raise

    async def _open_redis(self, settings: Settings) -> Transport:
        url = await resolve_redis_url(settings)
        client = await connect_redis(url, settings)
        try:
            self.features = await detect_features(client)
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        self.redis_url = url
        try:
            blocking = await connect_redis(url, settings)
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        return RedisTransport(client, blocking)

    async def _open_database(self, settings: Settings) -> None:
        self._engine = await open_database(settings)

    async def _register_topics(self) -> None:
        registry = keys.topic_registry(self.namespace)
        for topic in self.topics.values():
            recorded = await self.transport.register_topic(registry, topic.name, topic.partitions)
            if recorded != topic.partitions:
                raise ConfigurationError(
                    f"topic {topic.name!r} has {recorded} partitions in Redis but app"
                    f" {self.name!r} declares {topic.partitions}; changing the count would move"
                    " keys between partitions and break their order. Declare"
                    f" partitions={recorded}, or use a new topic name"
                )

    async def stop(self) -> None:
        try:
            if self._transport is not None:
                for hook in reversed(self._on_stop):
                    await hook(self)
        finally:
            await self._close()

    async def _close(self) -> None:
        transport, self._transport = self._transport, None
        engine, self._engine = self._engine, None
        if transport is not None:
            await transport.close()
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
