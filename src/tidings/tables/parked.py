"""Retries due far in the future, held in PostgreSQL instead of a Redis delay set.

A row is keyed by the group's delay set and the stream entry it retries, so parking the same
entry twice (a crash between the insert and the ack) keeps one row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Table,
    Text,
    UniqueConstraint,
)

from tidings.tables.common import metadata, timestamp

parked_retries = Table(
    "parked_retries",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stream", Text, nullable=False),  # the entry that failed, and its stream
    Column("entry_id", Text, nullable=False),
    Column("delay_set", Text, nullable=False),  # where it goes back to when nearly due
    Column("member", LargeBinary, nullable=False),  # the delay-set member: header NUL payload
    Column("due_at", DateTime(timezone=True), nullable=False),
    timestamp("created_at"),
    # Per group: two agents of one topic may both park a retry of the same entry.
    UniqueConstraint("delay_set", "stream", "entry_id"),
    Index("ix_parked_retries_due_at", "due_at"),
)
