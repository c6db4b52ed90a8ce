"""The notification pipeline's tables: message templates and recipient preferences.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies, not imports from tidings.tables: a migration must not change when the code does.
_CHANNELS = "ARRAY['email', 'sms', 'push', 'webhook']::text[]"


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _text(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _channels(name: str) -> sa.Column[Any]:
    return sa.Column(
        name, ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")
    )


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False, server_default=sa.text("''")),
        _text("name", nullable=False),
        _text("channel", nullable=False),
        _text("locale", nullable=False),
        _text("subject"),
        _text("body", nullable=False),
        _text("html"),
        _text("title"),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        _now("created_at"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint(
            "tenant", "name", "channel", "locale", name="uq_templates_tenant_name_channel_locale"
        ),
        sa.CheckConstraint(
            "channel IN ('email', 'sms', 'push', 'webhook')", name="ck_templates_channel"
        ),
        sa.CheckConstraint("body <> ''", name="ck_templates_body_not_empty"),
        sa.CheckConstraint("version > 0", name="ck_templates_version_positive"),
    )
    op.create_table(
        "preferences",
        _text("tenant", nullable=False),
        _text("user_id", nullable=False),
        _channels("opted_out"),
        _channels("channel_order"),
        sa.Column("quiet_start", sa.Time(), nullable=True),
        sa.Column("quiet_end", sa.Time(), nullable=True),
        _text("timezone"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("tenant", "user_id", name="pk_preferences"),
        sa.CheckConstraint(f"opted_out <@ {_CHANNELS}", name="ck_preferences_opted_out_known"),
        sa.CheckConstraint(
            f"channel_order <@ {_CHANNELS}", name="ck_preferences_channel_order_known"
        ),
        sa.CheckConstraint(
            "(quiet_start IS NULL) = (quiet_end IS NULL) "
            "AND quiet_start <> quiet_end",
            name="ck_preferences_quiet_hours_pair",
        ),
    )


def downgrade() -> None:
    for table in ("preferences", "templates"):
        op.drop_table(table)
