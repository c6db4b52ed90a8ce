"""Initial tables: queue configs, the delivery ledger, consumers and per-minute analytics.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies, not imports from tidings.tables: a migration must not change when the code does.
_DEFAULT_RETRY = {"strategy": "exponential_jitter", "base_s": 1, "max_s": 300, "max_attempts": 8}
_DEFAULT_QUEUES = ("email", "sms", "push", "orchestration")


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _at(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _text(name: str, *, nullable: bool = True, default: str | None = None) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(f"'{default}'")
    return sa.Column(name, sa.Text(), nullable=nullable, server_default=server_default)


def upgrade() -> None:
    _create_queue_configs()
    _create_ledger()
    _create_consumers()
    _create_analytics()


def _create_queue_configs() -> None:
    queue_configs = op.create_table(
        "queue_configs",
        _text("name", nullable=False),
        _text("topic", nullable=False),
        _text("channel", nullable=False),
        sa.Column("partitions", sa.Integer(), nullable=False, server_default=sa.text("4")),
        sa.Column("max_deliveries", sa.Integer(), nullable=False, server_default=sa.text("5")),
        sa.Column("retry_policy", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("rate_limit_per_s", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        _now("created_at"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_queue_configs"),
        sa.UniqueConstraint("topic", name="uq_queue_configs_topic"),
        sa.CheckConstraint("partitions > 0", name="ck_queue_configs_partitions_positive"),
        sa.CheckConstraint("max_deliveries > 0", name="ck_queue_configs_max_deliveries_positive"),
        sa.CheckConstraint("rate_limit_per_s > 0", name="ck_queue_configs_rate_limit_positive"),
    )
    op.bulk_insert(
        queue_configs,
        [
            {
                "name": name,
                "topic": f"notifications.{name}",
                "channel": name,
                "partitions": 4,
                "max_deliveries": 5,
                "retry_policy": _DEFAULT_RETRY,
            }
            for name in _DEFAULT_QUEUES
        ],
    )


def _create_ledger() -> None:
    op.create_table(
        "messages",
        _text("id", nullable=False),
        _text("topic", nullable=False),
        _text("key"),
        _text("priority", nullable=False, default="normal"),
        _text("type"),
        _text("tenant"),
        _text("idempotency_key"),
        sa.Column("payload", JSONB(), nullable=False),
        _text("trace_id"),
        _now("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_messages_priority"),
    )
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    # Partial and over coalesce(tenant, ''): key-less messages never collide, and the absent
    # tenant is one tenant. Works on every supported PostgreSQL (NULLS NOT DISTINCT is 15+).
    op.create_index(
        "uq_messages_tenant_idempotency_key",
        "messages",
        [sa.text("coalesce(tenant, '')"), "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _text("message_id", nullable=False),
        _text("channel", nullable=False),
        _text("recipient", nullable=False),
        _text("state", nullable=False),
        _text("provider"),
        _text("provider_message_id"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _text("last_error"),
        _now("created_at"),
        _now("updated_at"),
        _at("sent_at"),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_deliveries_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "message_id", "channel", "recipient", name="uq_deliveries_message_id_channel_recipient"
        ),
        sa.CheckConstraint(
            "state IN ('accepted', 'filtered', 'delayed', 'sent', 'failed', 'dead')",
            name="ck_deliveries_state",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_deliveries_attempts_not_negative"),
    )
    op.create_index("ix_deliveries_state_updated_at", "deliveries", ["state", "updated_at"])
    op.create_index("ix_deliveries_created_at", "deliveries", ["created_at"])


def _create_consumers() -> None:
    op.create_table(
        "consumer_groups",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        _text("topic", nullable=False),
        _text("name", nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_consumer_groups"),
        sa.UniqueConstraint("topic", "name", name="uq_consumer_groups_topic_name"),
    )
    op.create_table(
        "consumer_instances",
        _text("id", nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        _text("hostname", nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _text("state", nullable=False, default="running"),
        _now("started_at"),
        _now("last_heartbeat_at"),
        _at("stopped_at"),
        sa.PrimaryKeyConstraint("id", name="pk_consumer_instances"),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["consumer_groups.id"],
            name="fk_consumer_instances_group_id_consumer_groups",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "state IN ('running', 'stopping', 'stopped')", name="ck_consumer_instances_state"
        ),
    )
    op.create_index(
        "ix_consumer_instances_last_heartbeat_at", "consumer_instances", ["last_heartbeat_at"]
    )


def _create_analytics() -> None:
    dimensions = ("queue", "channel", "provider", "tenant", "type")
    op.create_table(
        "delivery_stats_minute",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *(_text(name, nullable=False, default="") for name in dimensions),
        _text("outcome", nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms_sum", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("latency_ms_max", sa.Double(), nullable=False, server_default=sa.text("0")),
        # bucket leads the key, which therefore also serves time-range scans.
        sa.PrimaryKeyConstraint("bucket", *dimensions, "outcome", name="pk_delivery_stats_minute"),
        sa.CheckConstraint(
            "outcome IN ('sent', 'failed', 'filtered', 'delayed', 'dead', 'retried')",
            name="ck_delivery_stats_minute_outcome",
        ),
        sa.CheckConstraint("count >= 0", name="ck_delivery_stats_minute_count_not_negative"),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints with it.
    for table in (
        "delivery_stats_minute",
        "consumer_instances",
        "consumer_groups",
        "deliveries",
        "messages",
        "queue_configs",
    ):
        op.drop_table(table)
