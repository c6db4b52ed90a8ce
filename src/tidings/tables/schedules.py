"""Schedules, the record of every fire, and the outbox that carries fired messages to Redis.

A fire row and its outbox row are written in the transaction that advances the schedule, so a
(schedule, tick) is claimed once; the relay publishes and deletes outbox rows.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from tidings.tables.common import metadata, one_of, timestamp

SCHEDULE_KINDS = ("at", "every", "cron")
SCHEDULE_STATES = ("active", "paused", "cancelled", "done")
MISFIRE_POLICIES = ("fire_once", "fire_all", "skip")

schedules = Table(
    "schedules",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("expression", Text, nullable=False),
    Column("timezone", Text, nullable=False, server_default=text("'UTC'")),
    timestamp("start_at", nullable=True),
    timestamp("end_at", nullable=True),
    Column("max_runs", Integer, nullable=True),
    Column("runs", Integer, nullable=False, server_default=text("0")),
    Column("misfire", Text, nullable=False, server_default=text("'fire_once'")),
    Column("state", Text, nullable=False, server_default=text("'active'")),
    Column("topic", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("key", Text, nullable=True),
    Column("priority", Text, nullable=False, server_default=text("'normal'")),
    timestamp("next_fire_at", nullable=True),
    timestamp("last_fire_at", nullable=True),
    timestamp("created_at"),
    timestamp("updated_at", onupdate=True),
    one_of("kind", SCHEDULE_KINDS, name="kind"),
    one_of("state", SCHEDULE_STATES, name="state"),
    one_of("misfire", MISFIRE_POLICIES, name="misfire"),
    one_of("priority", ("high", "normal", "low"), name="priority"),
    CheckConstraint("max_runs > 0", name="max_runs_positive"),
    # Only active schedules are ever due: the tick's scan costs what is due, not what is stored.
    Index(
        "ix_schedules_next_fire_at_active",
        "next_fire_at",
        postgresql_where=text("state = 'active'"),
    ),
)

schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column(
        "schedule_id",
        BigInteger,
        ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tick", DateTime(timezone=True), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    # fired_at - tick, both by the database's clock: how late the scheduler claimed it.
    Column("lateness_ms", Double, nullable=False),
    Column("scheduler", Text, nullable=False),
    # The exactly-once guarantee: one row per (schedule, tick), ever.
    PrimaryKeyConstraint("schedule_id", "tick"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("message_id", Text, nullable=False, unique=True),
    Column("topic", Text, nullable=False),
    Column("key", Text, nullable=True),
    Column("priority", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_ms", BigInteger, nullable=False),
    timestamp("created_at"),
)
