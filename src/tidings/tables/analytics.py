"""Delivery roll-ups per minute, hour and day, one row per bucket and combination of dimensions,
and the watermark up to which delivery events have been rolled up."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    PrimaryKeyConstraint,
    Table,
    Text,
)
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import ARRAY

from tidings.tables.common import metadata, one_of, timestamp

OUTCOMES = ("sent", "failed", "filtered", "delayed", "dead", "retried")
DIMENSIONS = ("queue", "channel", "provider", "tenant", "type")
LEVELS = ("minute", "hour", "day")
# Upper-exclusive bounds of the latency histogram's buckets, in ms: bucket i counts latencies
# in [LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]); the first starts at 0, the last is open.
LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
                     300_000, 900_000, 3_600_000)


def _dimension(name: str) -> Column[str]:
    # '' and not NULL for an absent dimension: primary key columns cannot be NULL, and
    # upserts must find the row again.
    return Column(name, Text, nullable=False, server_default=sql("''"))


def _stats(level: str) -> Table:
    name = f"delivery_stats_{level}"
    return Table(
        name,
        metadata,
        Column("bucket", DateTime(timezone=True), nullable=False),
        *(_dimension(name) for name in DIMENSIONS),
        Column("outcome", Text, nullable=False),
        Column("count", BigInteger, nullable=False, server_default=sql("0")),
        Column("latency_ms_sum", Double, nullable=False, server_default=sql("0")),
        Column("latency_ms_max", Double, nullable=False, server_default=sql("0")),
        # Counts per LATENCY_BOUNDS_MS bucket, of sent deliveries: percentiles are estimated
        # from it. Bounds are fixed so that buckets of different rows add up.
        Column("latency_ms_buckets", ARRAY(BigInteger), nullable=False,
               server_default=sql("'{}'::bigint[]")),
        # bucket leads the key, so the key also serves time-range scans: no separate bucket
        # index, which would only cost every roll-up write.
        PrimaryKeyConstraint("bucket", *DIMENSIONS, "outcome"),
        one_of("outcome", OUTCOMES, name="outcome"),
        CheckConstraint("count >= 0", name="count_not_negative"),
    )


delivery_stats_minute = _stats("minute")
delivery_stats_hour = _stats("hour")
delivery_stats_day = _stats("day")

analytics_watermarks = Table(
    "analytics_watermarks",
    metadata,
    Column("name", Text, primary_key=True),
    # Events recorded before this instant are in the roll-ups.
    Column("position", DateTime(timezone=True), nullable=False),
    timestamp("updated_at", onupdate=True),
)
