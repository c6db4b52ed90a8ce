"""Delivery events: the append-only story of every delivery, one row per state change recorded.

The ``deliveries`` row keeps only the latest state; these rows keep each step (attempts with their
errors, provider answers, delays) for ``tidings trace`` and for the analytics roll-ups.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    func,
)

from tidings.tables.common import metadata, one_of
from tidings.tables.ledger import DELIVERY_STATES

delivery_events = Table(
    "delivery_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # Retention removes a message with its deliveries and events: its story stays whole.
    Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempt", Integer, nullable=True),  # the send attempt it ends, for sent / failed
    Column("provider", Text, nullable=True),
    Column("provider_message_id", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Double, nullable=True),  # how long the provider call took
    Column("at", DateTime(timezone=True), nullable=False),  # when it happened
    # When it was written (transaction start): the roll-up's watermark follows this, not ``at``,
    # so an event written late (a flush retried after an outage) is still counted once.
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    one_of("state", DELIVERY_STATES, name="state"),
    CheckConstraint("attempt IS NULL OR attempt > 0", name="attempt_positive"),
    Index("ix_delivery_events_message_id", "message_id"),
    Index("ix_delivery_events_at", "at"),
    # Append-only, so rows lie in recorded_at order on disk: a BRIN index costs next to nothing
    # on the hot path and still finds the roll-up's window.
    Index("ix_delivery_events_recorded_at", "recorded_at", postgresql_using="brin"),
)
