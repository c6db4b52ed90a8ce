"""The metrics collector turns a snapshot into Prometheus samples (no servers involved)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from tidings.agent import AgentStats
from tidings.message import Priority
from tidings.observability.metrics import AgentCounts, PoolUsage, Snapshot, SnapshotCollector
from tidings.observability.queues import Lane, LaneGroup, PartitionState, QueueSnapshot, TopicState

NOW_MS = 1_700_000_100_000


def queues(*, lag: int | None = 3, oldest_ms: int | None = NOW_MS - 42_000) -> QueueSnapshot:
    group = LaneGroup("mail.send", pending=2, lag=lag, oldest_pending_ms=oldest_ms, consumers=1)
    lanes = (
        Lane(Priority.HIGH, "t:{t:mail:0}:high", 0, ()),
        Lane(Priority.NORMAL, "t:{t:mail:0}:normal", 7, (group,)),
        Lane(Priority.LOW, "t:{t:mail:0}:low", 0, ()),
    )
    partition = PartitionState(0, lanes, dead=4, delayed=1)
    return QueueSnapshot(NOW_MS, (TopicState("mail", (partition,), {"mail.send": 2}),))


def registry_with(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry()
    collector = SnapshotCollector()
    collector.snapshot = snapshot
    registry.register(collector)
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


LANE = {"topic": "mail", "partition": "0", "lane": "normal"}
GROUP = {**LANE, "group": "mail.send"}


def test_agent_counters_are_exported_per_topic_and_agent() -> None:
    stats = AgentStats(processed=45, rejected=3, invalid=1, poison=1, failed=2, reclaimed=6)
    registry = registry_with(Snapshot(agents=(AgentCounts("mail", "mail.send", stats, 2),)))

    labels = {"topic": "mail", "agent": "mail.send"}
    assert value(registry, "tidings_messages_processed_total", **labels) == 45
    assert value(registry, "tidings_messages_failed_total", **labels) == 2
    assert value(registry, "tidings_messages_dead_lettered_total", **labels) == 5
    assert value(registry, "tidings_messages_reclaimed_total", **labels) == 6
    assert value(registry, "tidings_partitions_owned", **labels) == 2


def test_owned_partitions_are_absent_where_the_process_runs_no_consumers() -> None:
    registry = registry_with(Snapshot(agents=(AgentCounts("mail", "a", AgentStats(), None),)))

    assert value(registry, "tidings_partitions_owned", topic="mail", agent="a") is None
    assert value(registry, "tidings_messages_processed_total", topic="mail", agent="a") == 0


def test_stream_gauges_come_from_the_queue_snapshot() -> None:
    registry = registry_with(Snapshot(queues=queues(), redis_up=True))

    assert value(registry, "tidings_stream_length", **LANE) == 7
    assert value(registry, "tidings_stream_pending", **GROUP) == 2
    assert value(registry, "tidings_stream_lag", **GROUP) == 3
    assert value(registry, "tidings_stream_oldest_pending_age_seconds", **GROUP) == 42
    assert value(registry, "tidings_dead_letter_length", topic="mail", partition="0") == 4
    assert value(registry, "tidings_delayed_size", topic="mail", partition="0") == 1
    assert value(registry, "tidings_group_members", topic="mail", group="mail.send") == 2
    assert value(registry, "tidings_topic_partitions", topic="mail") == 1
    assert value(registry, "tidings_redis_up") == 1


def test_unknown_lag_is_left_out_rather_than_reported_as_zero() -> None:
    registry = registry_with(Snapshot(queues=queues(lag=None), redis_up=True))

    assert value(registry, "tidings_stream_lag", **GROUP) is None
    assert value(registry, "tidings_stream_pending", **GROUP) == 2


def test_oldest_pending_age_is_zero_when_nothing_is_pending() -> None:
    registry = registry_with(Snapshot(queues=queues(oldest_ms=None), redis_up=True))

    assert value(registry, "tidings_stream_oldest_pending_age_seconds", **GROUP) == 0


def test_without_redis_only_redis_up_zero_and_process_metrics_remain() -> None:
    registry = registry_with(Snapshot(redis_up=False))

    assert value(registry, "tidings_redis_up") == 0
    assert value(registry, "tidings_stream_length", **LANE) is None
    assert value(registry, "tidings_database_up") is None


def test_database_metrics_report_live_consumers_and_pool_usage() -> None:
    snapshot = Snapshot(
        database_up=True,
        live={("mail", "mail.send"): 2, ("sms", "sms.send"): 0},
        pools=(PoolUsage("database", "main", 3, 7, 10), PoolUsage("redis", "main", 1, 4, 64)),
    )
    registry = registry_with(snapshot)

    assert value(registry, "tidings_database_up") == 1
    assert value(registry, "tidings_consumer_instances_live", topic="sms", group="sms.send") == 0
    assert value(registry, "tidings_consumer_instances_live", topic="mail",
                 group="mail.send") == 2
    assert value(registry, "tidings_database_pool_connections", pool="main",
                 state="in_use") == 3
    assert value(registry, "tidings_database_pool_size", pool="main") == 10
    assert value(registry, "tidings_redis_pool_connections", pool="main", state="idle") == 4
    assert value(registry, "tidings_redis_pool_size", pool="main") == 64


def test_the_registry_renders_in_the_text_format() -> None:
    registry = registry_with(Snapshot(queues=queues(), redis_up=True))

    text = generate_latest(registry).decode()

    assert "# TYPE tidings_messages_processed_total counter" in text
    assert 'tidings_stream_length{lane="normal",partition="0",topic="mail"} 7.0' in text
