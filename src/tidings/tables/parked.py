"""Retries due far in the future, held in PostgreSQL instead of a Redis delay set.

A row is keyed by its delay set and a hash of its member, so moving the same member twice (a
crash between the insert and the ZREM) keeps one row.
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
    Column("delay_set", Text, nullable=False),  # the group's delay set it came from
    Column("member_hash", Text, nullable=False),
    Column("member", LargeBinary, nullable=False),  # the delay-set member: header NUL payload
    Column("due_at", DateTime(timezone=True), nullable=False),
    timestamp("created_at"),
    UniqueConstraint("delay_set", "member_hash"),
    Index("ix_parked_retries_due_at", "due_at"),
)
