"""What the observability endpoints read: the connections, and this process's agents if any."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.agent import Agent
from tidings.app import App
from tidings.errors import ConfigurationError, TidingsError
from tidings.ownership import PartitionOwner
from tidings.streams import RedisTransport


def _no_owners() -> Sequence[PartitionOwner]:
    return ()


@dataclass
class Sources:
    """Everything `/metrics` and `/health/ready` look at, read only when they are asked.

    ``tidings serve`` has connections only; a worker adds its agents and partition owners.
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

    @classmethod
    def from_app(
        cls,
        app: App,
        *,
        agents: Sequence[Agent[Any]] | None = None,
        owners: Callable[[], Sequence[PartitionOwner]] = _no_owners,
    ) -> Sources:
        """The sources of a started App on Redis (with its database, if it opened one)."""
        transport = app.transport
        if not isinstance(transport, RedisTransport):
            raise ConfigurationError("metrics and health endpoints need the Redis transport")
        pools = {"main": transport.client.connection_pool}
        if transport.blocking is not transport.client:
            pools["blocking"] = transport.blocking.connection_pool
        settings = app.settings
        return cls(
            redis=transport.client,
            namespace=app.namespace,
            engine=_engine_of(app),
            schema=settings.database_schema,
            agents=list(app.agents.values()) if agents is None else agents,
            owners=owners,
            redis_pools=pools,
            heartbeat_window_s=3 * settings.heartbeat_interval_s,
        )


def _engine_of(app: App) -> AsyncEngine | None:
    try:
        return app.engine
    except TidingsError:  # started without a database
        return None
