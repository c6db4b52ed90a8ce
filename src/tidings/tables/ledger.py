"""The delivery ledger: one row per message, one per (message, channel, recipient) delivery.

The unique delivery key is what makes a redelivered or replayed message send at most once.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from tidings.tables.common import metadata, one_of, timestamp

PRIORITIES = ("high", "normal", "low")
DELIVERY_STATES = ("accepted", "filtered", "delayed", "sending", "sent", "failed", "dead")

messages = Table(
    "messages",
    metadata,
    Column("id", Text, primary_key=True),  # the envelope id
    Column("topic", Text, nullable=False),
    Column("key", Text, nullable=True),
    Column("priority", Text, nullable=False, server_default=text("'normal'")),
    Column("type", Text, nullable=True),
    Column("tenant", Text, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    Column("payload", JSONB, nullable=False),
    Column("trace_id", Text, nullable=True),
    timestamp("created_at"),
    one_of("priority", PRIORITIES, name="priority"),
    Index("ix_messages_created_at", "created_at"),
)

# One idempotency key per tenant, the absent tenant counting as one tenant (''). Messages without
# a key never collide, hence the partial index rather than NULLS NOT DISTINCT, which would also
# make two key-less messages of one tenant duplicates. Writers infer it with
# ON CONFLICT (coalesce(tenant, ''), idempotency_key) WHERE idempotency_key IS NOT NULL.
Index(
    "uq_messages_tenant_idempotency_key",
    func.coalesce(messages.c.tenant, ""),
    messages.c.idempotency_key,
    unique=True,
    postgresql_where=messages.c.idempotency_key.is_not(None),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("provider", Text, nullable=True),
    Column("provider_message_id", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    # Who moved the leg to 'sending': see tidings.pipelines.intents.
    Column("claim_token", Text, nullable=True),
    timestamp("created_at"),
    timestamp("updated_at", onupdate=True),
    timestamp("sent_at", nullable=True),
    one_of("state", DELIVERY_STATES, name="state"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    # Also the index behind the foreign key: message_id leads it. No other index: every leg
    # is inserted, then updated, on the hot path (migration 0007 says why).
    UniqueConstraint("message_id", "channel", "recipient"),
)

# One row per ledger flush whose outcome may still be unknown to its writer: the flush's
# statement inserts it first and writes nothing if it is already there, so a flush retried after
# a lost reply (or a cancelled wait) is applied once. The writer deletes it with a later flush,
# once it knows the flush landed.
ledger_flushes = Table(
    "ledger_flushes",
    metadata,
    Column("id", Text, primary_key=True),
    timestamp("written_at"),
)
