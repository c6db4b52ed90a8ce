"""What the observability endpoints read: the connections, and this process's agents if any."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from redis.asyncio import ConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.agent import Agent, Collector
from tidings.app import App
from tidings.errors import ConfigurationError, TidingsError
from tidings.ownership import PartitionOwner
from tidings.streams import RedisTransport


def _no_owners() -> Sequence[PartitionOwner]:
    return ()


@dataclass
class Sources:
    """Everything `/metrics` and `/health/ready` look at, read only when they are asked.

    ``tidings serve`` has connections only; a worker adds its agents and partition owners,
    and ``collectors``: in-process metrics (the agents' own, a scheduler's) read on scrape.
    """

    redis: Redis
    namespace: str
    engine: AsyncEngine | None = None
    schema: str = "tidings"
    agents: Sequence[Agent[Any]] = ()
    owners: Callable[[], Sequence[PartitionOwner]] = _no_owners
    redis_pools: Mapping[str, ConnectionPool] = field(default_factory=dict)
    heartbeat_window_s: float = 15.0
    """A consumer instance counts as live if it sent a heartbeat this recently."""
    check_timeout_s: float = 3.0
    """How long one readiness check or one scrape read may take before it counts as failed."""
    collectors: Sequence[Collector] = ()

    @classmethod
    def from_app(
        cls,
        app: App,
        *,
        agents: Sequence[Agent[Any]] | None = None,
        owners: Callable[[], Sequence[PartitionOwner]] = _no_owners,
        collectors: Sequence[Collector] = (),
    ) -> Sources:
        """The sources of a started App on Redis (with its database, if it opened one).

        ``agents`` (default: all of the app's) bring their collectors along, each once.
        """
        transport = app.transport
        if not isinstance(transport, RedisTransport):
            raise ConfigurationError("metrics and health endpoints need the Redis transport")
        pools = {"main": transport.client.connection_pool}
        if transport.blocking is not transport.client:
            pools["blocking"] = transport.blocking.connection_pool
        settings = app.settings
        agents = list(app.agents.values()) if agents is None else agents
        return cls(
            redis=transport.client,
            namespace=app.namespace,
            engine=_engine_of(app),
            schema=settings.database_schema,
            agents=agents,
            owners=owners,
            redis_pools=pools,
            heartbeat_window_s=3 * settings.heartbeat_interval_s,
            collectors=_unique([PublishedCollector(app), *collectors,
                                *(c for a in agents for c in a.collectors)]),
        )


class PublishedCollector:
    """``tidings_messages_published_total{topic}``: what this process published, per topic."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tidings_messages_published", "Messages this process published to the topic.",
            labels=["topic"],
        )
        for name, topic in sorted(self.app.topics.items()):
            family.add_metric([name], topic.published)
        yield family


def _unique(collectors: list[Collector]) -> list[Collector]:
    """Each collector once: several stages of one pipeline share its metrics."""
    return list({id(c): c for c in collectors}.values())


def _engine_of(app: App) -> AsyncEngine | None:
    try:
        return app.engine
    except TidingsError:  # started without a database
        return None
