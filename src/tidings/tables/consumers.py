"""Consumer groups and the worker instances in them, with the heartbeat queries workers run.

Times come from the database's clock (``now()``), never a worker's, so a worker with a skewed
clock is still judged live or dead correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import (
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    Table,
    Text,
    UniqueConstraint,
    case,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.tables.common import metadata, one_of, timestamp

InstanceState = Literal["running", "stopping", "stopped"]
INSTANCE_STATES: tuple[InstanceState, ...] = ("running", "stopping", "stopped")

consumer_groups = Table(
    "consumer_groups",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("topic", Text, nullable=False),
    Column("name", Text, nullable=False),
    timestamp("created_at"),
    UniqueConstraint("topic", "name"),
)

consumer_instances = Table(
    "consumer_instances",
    metadata,
    Column("id", Text, primary_key=True),  # the Redis consumer name
    Column(
        "group_id",
        Integer,
        ForeignKey("consumer_groups.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'running'")),
    timestamp("started_at"),
    timestamp("last_heartbeat_at"),
    timestamp("stopped_at", nullable=True),
    one_of("state", INSTANCE_STATES, name="state"),
    Index("ix_consumer_instances_last_heartbeat_at", "last_heartbeat_at"),
)


@dataclass(frozen=True, slots=True)
class ConsumerInstance:
    """One worker instance as last reported by its heartbeat."""

    id: str
    group_id: int
    topic: str
    group: str
    hostname: str
    pid: int
    state: InstanceState
    started_at: datetime
    last_heartbeat_at: datetime


async def register_group(conn: AsyncConnection, topic: str, name: str) -> int:
    """Record the consumer group ``name`` of ``topic`` unless it exists; return its id."""
    stmt = insert(consumer_groups).values(topic=topic, name=name)
    # DO UPDATE, not DO NOTHING: RETURNING yields only rows the statement touched, and a no-op
    # update keeps this one atomic statement. It runs once per worker start, so the extra row
    # version costs nothing.
    stmt = stmt.on_conflict_do_update(
        index_elements=["topic", "name"], set_={"topic": stmt.excluded.topic}
    )
    result = await conn.execute(stmt.returning(consumer_groups.c.id))
    return int(result.scalar_one())


async def heartbeat(
    conn: AsyncConnection,
    *,
    instance_id: str,
    group_id: int,
    hostname: str,
    pid: int,
    state: InstanceState = "running",
) -> None:
    """Insert or refresh the instance's row; its ``last_heartbeat_at`` becomes ``now()``."""
    stopped_at = func.now() if state == "stopped" else None
    stmt = insert(consumer_instances).values(
        id=instance_id,
        group_id=group_id,
        hostname=hostname,
        pid=pid,
        state=state,
        stopped_at=stopped_at,
    )
    existing = consumer_instances.c
    stmt = stmt.on_conflict_do_update(
        index_elements=[existing.id],
        set_={
            "group_id": group_id,
            "hostname": hostname,
            "pid": pid,
            "state": state,
            "last_heartbeat_at": func.now(),
            "stopped_at": stopped_at,
            # A consumer name reused after a stop is a new start.
            "started_at": case(
                (existing.state == "stopped", func.now()), else_=existing.started_at
            ),
        },
    )
    await conn.execute(stmt)


async def mark_stopped(conn: AsyncConnection, instance_id: str) -> None:
    """Record that the instance stopped cleanly, so nobody waits for its heartbeat to lapse."""
    await conn.execute(
        update(consumer_instances)
        .where(consumer_instances.c.id == instance_id)
        .values(state="stopped", stopped_at=func.now())
    )


async def live_instances(conn: AsyncConnection, within_s: float) -> list[ConsumerInstance]:
    """Instances not stopped whose last heartbeat is at most ``within_s`` seconds old."""
    instances, groups = consumer_instances.c, consumer_groups.c
    window = literal(timedelta(seconds=within_s), Interval())
    query = (
        select(
            instances.id,
            instances.group_id,
            groups.topic,
            groups.name,
            instances.hostname,
            instances.pid,
            instances.state,
            instances.started_at,
            instances.last_heartbeat_at,
        )
        .join_from(consumer_instances, consumer_groups)
        .where(instances.state != "stopped", instances.last_heartbeat_at >= func.now() - window)
        .order_by(groups.topic, groups.name, instances.id)
    )
    return [ConsumerInstance(*row) for row in await conn.execute(query)]
