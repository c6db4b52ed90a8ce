"""Per-minute delivery roll-ups, one row per bucket and combination of dimensions."""

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

from tidings.tables.common import metadata, one_of

OUTCOMES = ("sent", "failed", "filtered", "delayed", "dead", "retried")
DIMENSIONS = ("queue", "channel", "provider", "tenant", "type")


def _dimension(name: str) -> Column[str]:
    # '' and not NULL for an absent dimension: primary key columns cannot be NULL, and
    # upserts must find the row again.
    return Column(name, Text, nullable=False, server_default=sql("''"))


delivery_stats_minute = Table(
    "delivery_stats_minute",
    metadata,
    Column("bucket", DateTime(timezone=True), nullable=False),
    *(_dimension(name) for name in DIMENSIONS),
    Column("outcome", Text, nullable=False),
    Column("count", BigInteger, nullable=False, server_default=sql("0")),
    Column("latency_ms_sum", Double, nullable=False, server_default=sql("0")),
    Column("latency_ms_max", Double, nullable=False, server_default=sql("0")),
    # bucket leads the key, so the key also serves time-range scans: no separate bucket index,
    # which would only cost every roll-up write.
    PrimaryKeyConstraint("bucket", *DIMENSIONS, "outcome"),
    one_of("outcome", OUTCOMES, name="outcome"),
    CheckConstraint("count >= 0", name="count_not_negative"),
)
