"""Analytics: delivery events, the latency histogram, hour and day roll-ups, their watermark.

Also two SQL helpers that add latency histograms element by element: ``tidings_buckets_add``
(the roll-up upserts merge with it) and the aggregate ``tidings_buckets_sum`` (reports).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies, not imports from tidings.tables: a migration must not change when the code does.
_STATES = "'accepted', 'filtered', 'delayed', 'sending', 'sent', 'failed', 'dead'"
_OUTCOMES = "'sent', 'failed', 'filtered', 'delayed', 'dead', 'retried'"
_DIMENSIONS = ("queue", "channel", "provider", "tenant", "type")
_EMPTY = "'{}'::bigint[]"

_ADD = """
CREATE FUNCTION tidings_buckets_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY n), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS u(x, y, n)
$$
"""
_SUM = """
CREATE AGGREGATE tidings_buckets_sum(bigint[]) (
    SFUNC = tidings_buckets_add, STYPE = bigint[], INITCOND = '{}'
)
"""


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False,
                     server_default=sa.func.now())


def _text(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _buckets() -> sa.Column[Any]:
    return sa.Column("latency_ms_buckets", ARRAY(sa.BigInteger()), nullable=False,
                     server_default=sa.text(_EMPTY))


def _stats(level: str) -> None:
    name = f"delivery_stats_{level}"
    op.create_table(
        name,
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(d, sa.Text(), nullable=False, server_default=sa.text("''"))
          for d in _DIMENSIONS),
        _text("outcome", nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms_sum", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms_max", sa.Double(), nullable=False, server_default=sa.text("0")),
        _buckets(),
        sa.PrimaryKeyConstraint("bucket", *_DIMENSIONS, "outcome", name=f"pk_{name}"),
        sa.CheckConstraint(f"outcome IN ({_OUTCOMES})", name=f"ck_{name}_outcome"),
        sa.CheckConstraint("count >= 0", name=f"ck_{name}_count_not_negative"),
    )


def upgrade() -> None:
    op.create_table(
        "delivery_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _text("message_id", nullable=False),
        _text("channel", nullable=False),
        _text("recipient", nullable=False),
        _text("state", nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        _text("provider"),
        _text("provider_message_id"),
        _text("error"),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        _now("recorded_at"),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_events"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE",
                                name="fk_delivery_events_message_id_messages"),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_delivery_events_state"),
        sa.CheckConstraint("attempt IS NULL OR attempt > 0",
                           name="ck_delivery_events_attempt_positive"),
    )
    op.create_index("ix_delivery_events_message_id", "delivery_events", ["message_id"])
    op.create_index("ix_delivery_events_at", "delivery_events", ["at"])
    op.create_index("ix_delivery_events_recorded_at", "delivery_events", ["recorded_at"],
                    postgresql_using="brin")
    op.add_column("delivery_stats_minute", _buckets())
    _stats("hour")
    _stats("day")
    op.create_table(
        "analytics_watermarks",
        _text("name", nullable=False),
        sa.Column("position", sa.DateTime(timezone=True), nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_analytics_watermarks"),
    )
    op.execute(_ADD)
    op.execute(_SUM)


def downgrade() -> None:
    op.execute("DROP AGGREGATE tidings_buckets_sum(bigint[])")
    op.execute("DROP FUNCTION tidings_buckets_add(bigint[], bigint[])")
    op.drop_table("analytics_watermarks")
    op.drop_table("delivery_stats_day")
    op.drop_table("delivery_stats_hour")
    op.drop_column("delivery_stats_minute", "latency_ms_buckets")
    op.drop_table("delivery_events")
