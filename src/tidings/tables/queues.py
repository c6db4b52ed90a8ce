"""Per-queue configuration: the topic, channel, partitions, retries and rate limit of each queue."""

from __future__ import annotations

from sqlalchemy import Boolean, CheckConstraint, Column, Integer, Table, Text, text, true
from sqlalchemy.dialects.postgresql import JSONB

from tidings.tables.common import metadata, timestamp

queue_configs = Table(
    "queue_configs",
    metadata,
    Column("name", Text, primary_key=True),
    Column("topic", Text, nullable=False, unique=True),
    Column("channel", Text, nullable=False),
    Column("partitions", Integer, nullable=False, server_default=text("4")),
    Column("max_deliveries", Integer, nullable=False, server_default=text("5")),
    Column("retry_policy", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # NULL = no rate limit.
    Column("rate_limit_per_s", Integer, nullable=True),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    timestamp("created_at"),
    timestamp("updated_at", onupdate=True),
    CheckConstraint("partitions > 0", name="partitions_positive"),
    CheckConstraint("max_deliveries > 0", name="max_deliveries_positive"),
    CheckConstraint("rate_limit_per_s > 0", name="rate_limit_positive"),
)
