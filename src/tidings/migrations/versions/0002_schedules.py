"""Schedules, their fires and the outbox the scheduler publishes through.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _at(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    default = None if nullable else sa.func.now()
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=default
    )


def _text(name: str, *, nullable: bool = True, default: str | None = None) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(f"'{default}'")
    return sa.Column(name, sa.Text(), nullable=nullable, server_default=server_default)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _text("name", nullable=False),
        _text("kind", nullable=False),
        _text("expression", nullable=False),
        _text("timezone", nullable=False, default="UTC"),
        _at("start_at"),
        _at("end_at"),
        sa.Column("max_runs", sa.Integer(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _text("misfire", nullable=False, default="fire_once"),
        _text("state", nullable=False, default="active"),
        _text("topic", nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        _text("key"),
        _text("priority", nullable=False, default="normal"),
        _at("next_fire_at"),
        _at("last_fire_at"),
        _at("created_at", nullable=False),
        _at("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("name", name="uq_schedules_name"),
        sa.CheckConstraint("kind IN ('at', 'every', 'cron')", name="ck_schedules_kind"),
        sa.CheckConstraint(
            "state IN ('active', 'paused', 'cancelled', 'done')", name="ck_schedules_state"
        ),
        sa.CheckConstraint(
            "misfire IN ('fire_once', 'fire_all', 'skip')", name="ck_schedules_misfire"
        ),
        sa.CheckConstraint(
            "priority IN ('high', 'normal', 'low')", name="ck_schedules_priority"
        ),
        sa.CheckConstraint("max_runs > 0", name="ck_schedules_max_runs_positive"),
    )
    op.create_index(
        "ix_schedules_next_fire_at_active",
        "schedules",
        ["next_fire_at"],
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_table(
        "schedule_fires",
        sa.Column("schedule_id", sa.BigInteger(), nullable=False),
        sa.Column("tick", sa.DateTime(timezone=True), nullable=False),
        _text("message_id", nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lateness_ms", sa.Double(), nullable=False),
        _text("scheduler", nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "tick", name="pk_schedule_fires"),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name="fk_schedule_fires_schedule_id_schedules",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _text("message_id", nullable=False),
        _text("topic", nullable=False),
        _text("key"),
        _text("priority", nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column(
            "headers", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        _at("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
    )


def downgrade() -> None:
    for table in ("outbox", "schedule_fires", "schedules"):
        op.drop_table(table)
