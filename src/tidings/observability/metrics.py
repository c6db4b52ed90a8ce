"""Prometheus metrics read when scraped, never counted on the hot path.

Each scrape first takes a :class:`Snapshot` asynchronously — the agents' counters, the partitions
this process owns, stream state from Redis, live consumers from PostgreSQL, pool usage — then a
collector on the injected registry turns it into metric families. Counters are per process
(Prometheus adds them up across instances). Stream gauges describe shared state, so every
process reports the same values: aggregate those with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from tidings.agent import AgentStats, Collector
from tidings.observability.histogram import histogram_family
from tidings.observability.queues import QueueSnapshot, read_queues
from tidings.observability.sources import Sources
from tidings.sinks.breaker import BreakerState, RedisBreakerStore
from tidings.tables import consumers

T = TypeVar("T")
log = logging.getLogger("tidings.metrics")

# AgentStats field -> (metric name without _total, help)
COUNTERS = {
    "processed": ("tidings_messages_processed", "Messages an agent handled and acked."),
    "failed": ("tidings_messages_failed",
               "Handler failures (each is then retried or dead-lettered)."),
    "retried": ("tidings_messages_retried",
                "Retries scheduled: one per failed attempt that will be tried again."),
    "rejected": ("tidings_messages_rejected", "Messages a handler rejected (dead-lettered)."),
    "invalid": ("tidings_messages_invalid",
                "Messages whose payload could not be decoded (dead-lettered)."),
    "poison": ("tidings_messages_poison",
               "Messages delivered too often without an ack (dead-lettered)."),
    "exhausted": ("tidings_messages_exhausted",
                  "Messages that used up their retry attempts or deadline (dead-lettered)."),
    "permanent": ("tidings_messages_permanent",
                  "Messages whose failure retrying cannot fix (dead-lettered at once)."),
    "reclaimed": ("tidings_messages_reclaimed",
                  "Pending messages taken over from an idle or crashed consumer."),
    "deleted": ("tidings_messages_deleted",
                "Pending entries found deleted from their stream, acked and skipped."),
    "trimmed": ("tidings_stream_entries_trimmed",
                "Stream entries trimmed once every consumer group was done with them."),
}


@dataclass(frozen=True, slots=True)
class AgentCounts:
    topic: str
    agent: str
    stats: AgentStats
    owned: int | None
    """Partitions this process reads for the agent; None where it runs no consumers."""


@dataclass(frozen=True, slots=True)
class PoolUsage:
    server: str  # "redis" or "database"
    pool: str
    in_use: int
    idle: int
    size: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports, read before the (synchronous) collector runs."""

    agents: tuple[AgentCounts, ...] = ()
    queues: QueueSnapshot | None = None
    redis_up: bool = False
    live: Mapping[tuple[str, str], int] | None = None
    """Live consumer instances per (topic, group); None without a reachable database."""
    database_up: bool | None = None
    pools: tuple[PoolUsage, ...] = ()
    breakers: Mapping[str, BreakerState] | None = None
    """Every provider breaker's state (shared in Redis); None if Redis could not be read."""
    duration_s: float = 0.0
    collectors: tuple[Collector, ...] = ()
    """In-process metrics (delivery counts, scheduler lateness), read as they are rendered."""


async def take_snapshot(sources: Sources) -> Snapshot:
    """Read every source at once; one that fails or is too slow is reported as down."""
    started = time.perf_counter()
    timeout = sources.check_timeout_s
    breakers = RedisBreakerStore(sources.redis, sources.namespace)
    queues, live, states = await asyncio.gather(
        _guarded("Redis", read_queues(sources.redis, sources.namespace), timeout),
        _guarded("PostgreSQL", _live_consumers(sources.engine, sources.heartbeat_window_s),
                 timeout) if sources.engine is not None else _none(),
        _guarded("circuit breakers", breakers.states(), timeout),
    )
    return Snapshot(
        agents=_agent_counts(sources),
        queues=queues,
        redis_up=queues is not None,
        live=live,
        database_up=None if sources.engine is None else live is not None,
        pools=_pool_usage(sources),
        breakers=states,
        duration_s=time.perf_counter() - started,
        collectors=tuple(sources.collectors),
    )


async def _guarded(what: str, read: Awaitable[T], limit_s: float) -> T | None:
    try:
        async with asyncio.timeout(limit_s):
            return await read
    except Exception as exc:
        log.warning("metrics: could not read %s: %s: %s", what, type(exc).__name__, exc)
        return None


async def _none() -> None:
    return None


def _agent_counts(sources: Sources) -> tuple[AgentCounts, ...]:
    owned: dict[str, int] = {}
    for owner in sources.owners():
        owned[owner.agent.name] = owned.get(owner.agent.name, 0) + len(owner.running)
    return tuple(
        AgentCounts(agent.topic.name, agent.name,
                    dataclasses.replace(agent.stats,
                                        handler_seconds=agent.stats.handler_seconds.copy()),
                    owned.get(agent.name))
        for agent in sources.agents
    )


async def _live_consumers(engine: AsyncEngine, window_s: float) -> dict[tuple[str, str], int]:
    groups = consumers.consumer_groups.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(groups.topic, groups.name))
        counts = {(topic, name): 0 for topic, name in rows}
        for instance in await consumers.live_instances(conn, window_s):
            key = (instance.topic, instance.group)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _pool_usage(sources: Sources) -> tuple[PoolUsage, ...]:
    usage = []
    for name, pool in sources.redis_pools.items():
        # redis-py has no public per-pool count before 8.x: read its two connection lists.
        in_use = len(getattr(pool, "_in_use_connections", ()))
        idle = len([c for c in getattr(pool, "_available_connections", ()) if c is not None])
        usage.append(PoolUsage("redis", name, in_use, idle, pool.max_connections))
    if sources.engine is not None and isinstance(sources.engine.pool, QueuePool):
        queue = sources.engine.pool
        usage.append(PoolUsage("database", "main", queue.checkedout(), queue.checkedin(),
                               queue.size()))
    return tuple(usage)


# -- the collector --------------------------------------------------------------------------


class SnapshotCollector:
    """A prometheus_client collector that reports the last snapshot it was given."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        yield from _agent_families(snapshot.agents)
        if snapshot.queues is not None:
            yield from _queue_families(snapshot.queues)
        if snapshot.breakers is not None:
            yield _breaker_family(snapshot.breakers)
        yield from _health_families(snapshot)
        for collector in snapshot.collectors:
            yield from collector.collect()


def _breaker_family(states: Mapping[str, BreakerState]) -> Metric:
    family = GaugeMetricFamily(
        "tidings_breaker_state",
        "1 for the state each provider's circuit breaker is in (closed, half_open, open).",
        labels=["provider", "state"],
    )
    for provider, current in states.items():
        for state in BreakerState:
            family.add_metric([provider, state.value], 1 if state is current else 0)
    return family


def _agent_families(agents: tuple[AgentCounts, ...]) -> Iterator[Metric]:
    labels = ["topic", "agent"]
    for field, (name, doc) in COUNTERS.items():
        family = CounterMetricFamily(name, doc, labels=labels)
        for counts in agents:
            family.add_metric([counts.topic, counts.agent], getattr(counts.stats, field))
        yield family
    dead = CounterMetricFamily("tidings_messages_dead_lettered",
                               "Messages sent to a dead-letter stream, for any reason.",
                               labels=labels)
    owned = GaugeMetricFamily("tidings_partitions_owned",
                              "Partitions of the agent's topic this process reads.", labels=labels)
    for counts in agents:
        dead.add_metric([counts.topic, counts.agent], counts.stats.dead_lettered)
        if counts.owned is not None:
            owned.add_metric([counts.topic, counts.agent], counts.owned)
    yield dead
    yield owned
    yield histogram_family(
        "tidings_handler_seconds",
        "Duration of one handler call: one message, or one batch for a batch agent.", labels,
        [((c.topic, c.agent), c.stats.handler_seconds) for c in agents])


def _queue_families(queues: QueueSnapshot) -> Iterator[Metric]:
    lane_labels = ["topic", "partition", "lane"]
    group_labels = [*lane_labels, "group"]
    partitions = GaugeMetricFamily("tidings_topic_partitions", "Partitions of the topic.",
                                   labels=["topic"])
    length = GaugeMetricFamily("tidings_stream_length", "Entries in a lane stream (XLEN).",
                               labels=lane_labels)
    pending = GaugeMetricFamily("tidings_stream_pending",
                                "Entries delivered to the group but not acked yet.",
                                labels=group_labels)
    lag = GaugeMetricFamily("tidings_stream_lag", "Entries not yet delivered to the group"
                            " (absent where the server cannot tell it cheaply, e.g. Redis 6.2).",
                            labels=group_labels)
    age = GaugeMetricFamily("tidings_stream_oldest_pending_age_seconds",
                            "Age of the group's oldest pending entry, from its id (0: none).",
                            labels=group_labels)
    dead = GaugeMetricFamily("tidings_dead_letter_length", "Entries in the dead-letter stream.",
                             labels=["topic", "partition"])
    delayed = GaugeMetricFamily("tidings_delayed_size", "Messages waiting in the delay set.",
                                labels=["topic", "partition"])
    members = GaugeMetricFamily("tidings_group_members",
                                "Live processes in the consumer group (Redis member set).",
                                labels=["topic", "group"])
    for topic in queues.topics:
        partitions.add_metric([topic.name], len(topic.partitions))
        for group, count in topic.members.items():
            members.add_metric([topic.name, group], count)
        for part in topic.partitions:
            where = [topic.name, str(part.partition)]
            dead.add_metric(where, part.dead)
            delayed.add_metric(where, part.delayed)
            for lane in part.lanes:
                length.add_metric([*where, lane.priority.value], lane.length)
                for g in lane.groups:
                    labels = [*where, lane.priority.value, g.group]
                    pending.add_metric(labels, g.pending)
                    if g.lag is not None:
                        lag.add_metric(labels, g.lag)
                    oldest = g.oldest_pending_ms
                    age.add_metric(labels, 0 if oldest is None
                                   else max(queues.taken_ms - oldest, 0) / 1000)
    yield from (partitions, length, pending, lag, age, dead, delayed, members)


def _health_families(snapshot: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("tidings_redis_up", "1 if the last scrape could read Redis.",
                            value=int(snapshot.redis_up))
    if snapshot.database_up is not None:
        yield GaugeMetricFamily("tidings_database_up",
                                "1 if the last scrape could read PostgreSQL.",
                                value=int(snapshot.database_up))
    if snapshot.live is not None:
        live = GaugeMetricFamily("tidings_consumer_instances_live",
                                 "Worker instances of the group with a recent heartbeat.",
                                 labels=["topic", "group"])
        for (topic, group), count in sorted(snapshot.live.items()):
            live.add_metric([topic, group], count)
        yield live
    connections = {
        server: GaugeMetricFamily(f"tidings_{server}_pool_connections",
                                  f"Connections of the {server} pool, by state.",
                                  labels=["pool", "state"])
        for server in ("redis", "database")
    }
    sizes = {
        server: GaugeMetricFamily(f"tidings_{server}_pool_size",
                                  f"Connections the {server} pool keeps at most"
                                  " (database: before overflow).", labels=["pool"])
        for server in ("redis", "database")
    }
    for usage in snapshot.pools:
        connections[usage.server].add_metric([usage.pool, "in_use"], usage.in_use)
        connections[usage.server].add_metric([usage.pool, "idle"], usage.idle)
        sizes[usage.server].add_metric([usage.pool], usage.size)
    yield from connections.values()
    yield from sizes.values()
    yield GaugeMetricFamily("tidings_scrape_duration_seconds",
                            "Time taken to read Redis and PostgreSQL for this scrape.",
                            value=snapshot.duration_s)


class Metrics:
    """The metrics of one process on an injected registry, refreshed on every scrape."""

    def __init__(self, sources: Sources, registry: CollectorRegistry) -> None:
        self.sources = sources
        self.registry = registry
        self.collector = SnapshotCollector()
        registry.register(self.collector)
        self._lock = asyncio.Lock()

    async def scrape(self) -> bytes:
        """Take a fresh snapshot and render the registry in the Prometheus text format."""
        async with self._lock:  # concurrent scrapes must not interleave snapshots
            self.collector.snapshot = await take_snapshot(self.sources)
            return generate_latest(self.registry)

    def close(self) -> None:
        self.registry.unregister(self.collector)
