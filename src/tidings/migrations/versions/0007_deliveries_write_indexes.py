"""Deliveries: drop the two indexes no query uses.

(state, updated_at) and (created_at) came with the first schema, speculatively. Nothing reads
deliveries by them (lookups go by (message_id, channel, recipient), retention by message id,
reports by delivery events), yet every delivery insert maintained both, and the one on
``state`` kept the 'sending' → 'sent' update of every leg from being a HOT update. Without
them the pipeline's per-batch statements cost PostgreSQL about a tenth less CPU.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_state_updated_at", table_name="deliveries")
    op.drop_index("ix_deliveries_created_at", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_created_at", "deliveries", ["created_at"])
    op.create_index("ix_deliveries_state_updated_at", "deliveries", ["state", "updated_at"])
