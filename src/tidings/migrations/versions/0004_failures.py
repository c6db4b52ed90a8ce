"""Failure handling: dead letters with their replay audit, retries parked for later, the
'sending' delivery state, and the seeded queues' retry policies in tidings.retry's format.

'sending' is the intent row written before a provider is called, so a worker that dies between
the call and the ack does not send a second time (exactly-once effect).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies, not imports from tidings.tables: a migration must not change when the code does.
_OLD_STATES = "'accepted', 'filtered', 'delayed', 'sent', 'failed', 'dead'"
_NEW_STATES = "'accepted', 'filtered', 'delayed', 'sending', 'sent', 'failed', 'dead'"


_OLD_RETRY = {"strategy": "exponential_jitter", "base_s": 1, "max_s": 300, "max_attempts": 8}
_NEW_RETRY = {"strategy": "full_jitter", "base": 1, "max_delay": 300, "max_attempts": 8}
_SET_RETRY = ("UPDATE queue_configs SET retry_policy = CAST(:new AS jsonb)"
              " WHERE retry_policy = CAST(:old AS jsonb)")


def _set_retry(new: dict[str, Any], old: dict[str, Any]) -> None:
    op.execute(sa.text(_SET_RETRY).bindparams(new=json.dumps(new), old=json.dumps(old)))


def _now(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=None if nullable else sa.func.now())


def _text(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _int(name: str, default: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text(default))


def _json(name: str, default: str) -> sa.Column[Any]:
    return sa.Column(name, JSONB(), nullable=False, server_default=sa.text(default))


def upgrade() -> None:
    _set_retry(_NEW_RETRY, _OLD_RETRY)
    op.drop_constraint("ck_deliveries_state", "deliveries", type_="check")
    op.create_check_constraint("ck_deliveries_state", "deliveries", f"state IN ({_NEW_STATES})")
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        _text("topic", nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        _text("group_name", nullable=False),
        _text("stream", nullable=False),
        _text("entry_id", nullable=False),
        _text("dead_stream", nullable=False),
        _text("dead_entry_id", nullable=False),
        _text("message_id"),
        _text("key"),
        _text("priority"),
        _text("kind", nullable=False),
        _text("error_type"),
        _text("error_message", nullable=False),
        _text("fingerprint", nullable=False),
        _int("attempts", "1"),
        _int("deliveries", "1"),
        sa.Column("envelope", sa.LargeBinary(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        _json("headers", "'{}'::jsonb"),
        _json("errors", "'[]'::jsonb"),
        sa.Column("state", sa.Text(), nullable=False, server_default=sa.text("'dead'")),
        _int("replays", "0"),
        _now("first_failed_at"),
        _now("last_failed_at"),
        _now("created_at"),
        _now("replayed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint("dead_stream", "dead_entry_id",
                            name="uq_dead_letters_dead_stream_dead_entry_id"),
        sa.CheckConstraint(
            "kind IN ('rejected', 'invalid', 'poison', 'exhausted', 'permanent')",
            name="ck_dead_letters_kind",
        ),
        sa.CheckConstraint("state IN ('dead', 'replayed')", name="ck_dead_letters_state"),
        sa.CheckConstraint("attempts > 0", name="ck_dead_letters_attempts_positive"),
    )
    op.create_index("ix_dead_letters_topic_created_at", "dead_letters", ["topic", "created_at"])
    op.create_index("ix_dead_letters_fingerprint", "dead_letters", ["fingerprint"])
    op.create_index("ix_dead_letters_message_id", "dead_letters", ["message_id"])
    op.create_table(
        "dead_letter_replays",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("dead_letter_id", sa.BigInteger(), nullable=False),
        _text("message_id"),
        _text("replayed_by", nullable=False),
        _json("edits", "'{}'::jsonb"),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        _text("target_stream", nullable=False),
        _text("new_entry_id"),
        _now("replayed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letter_replays"),
    )
    op.create_index("ix_dead_letter_replays_dead_letter_id", "dead_letter_replays",
                    ["dead_letter_id"])
    _parked()


def _parked() -> None:
    op.create_table(
        "parked_retries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        _text("delay_set", nullable=False),
        _text("member_hash", nullable=False),
        sa.Column("member", sa.LargeBinary(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_parked_retries"),
        sa.UniqueConstraint("delay_set", "member_hash",
                            name="uq_parked_retries_delay_set_member_hash"),
    )
    op.create_index("ix_parked_retries_due_at", "parked_retries", ["due_at"])


def downgrade() -> None:
    op.drop_table("parked_retries")
    op.drop_table("dead_letter_replays")
    op.drop_table("dead_letters")
    op.execute("DELETE FROM deliveries WHERE state = 'sending'")
    op.drop_constraint("ck_deliveries_state", "deliveries", type_="check")
    op.create_check_constraint("ck_deliveries_state", "deliveries", f"state IN ({_OLD_STATES})")
    _set_retry(_OLD_RETRY, _NEW_RETRY)
