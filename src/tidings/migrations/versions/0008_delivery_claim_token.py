"""Deliveries: the token of the claim that moved a leg to 'sending'.

A worker whose claim committed but whose reply was lost (the database restarted, the
connection broke, the call was cancelled) keeps the token it sent, and claims the leg again
with it: the leg is known unsent, not an outcome unknown (see tidings.pipelines.intents). A
nullable column without a default: adding it rewrites nothing.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("claim_token", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "claim_token")
