"""Recipient preferences: channel opt-outs, preferred channel order and quiet hours per user."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, PrimaryKeyConstraint, Table, Text, Time, text
from sqlalchemy.dialects.postgresql import ARRAY

from tidings.tables.common import metadata, timestamp

_KNOWN = "ARRAY['email', 'sms', 'push', 'webhook']::text[]"

preferences = Table(
    "preferences",
    metadata,
    Column("tenant", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("opted_out", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("channel_order", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    # Local wall-clock times in ``timezone``; start > end wraps past midnight.
    Column("quiet_start", Time, nullable=True),
    Column("quiet_end", Time, nullable=True),
    # NULL: the recipient's timezone from the notification, else UTC.
    Column("timezone", Text, nullable=True),
    timestamp("updated_at", onupdate=True),
    PrimaryKeyConstraint("tenant", "user_id"),
    CheckConstraint(f"opted_out <@ {_KNOWN}", name="opted_out_known"),
    CheckConstraint(f"channel_order <@ {_KNOWN}", name="channel_order_known"),
    CheckConstraint(
        "(quiet_start IS NULL) = (quiet_end IS NULL) AND quiet_start <> quiet_end",
        name="quiet_hours_pair",
    ),
)
