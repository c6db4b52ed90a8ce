"""Dead letters kept in PostgreSQL, and the audit trail of every replay of one.

A dead letter is copied here from its partition's dead-letter stream with the exact bytes of its
envelope and payload, so a replay sends what was parked (plus any recorded edit), and a purge or
a lost Redis does not lose the evidence.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from tidings.tables.common import metadata, one_of, timestamp

DEAD_KINDS = ("rejected", "invalid", "poison", "exhausted", "permanent")
DEAD_STATES = ("dead", "replayed")

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("group_name", Text, nullable=False),  # the agent that gave up on it
    Column("stream", Text, nullable=False),  # where it was read from
    Column("entry_id", Text, nullable=False),  # its id there
    Column("dead_stream", Text, nullable=False),
    Column("dead_entry_id", Text, nullable=False),
    Column("message_id", Text, nullable=True),  # the envelope id, when the envelope is readable
    Column("key", Text, nullable=True),
    Column("priority", Text, nullable=True),
    Column("kind", Text, nullable=False),
    Column("error_type", Text, nullable=True),
    Column("error_message", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("deliveries", Integer, nullable=False, server_default=text("1")),
    Column("envelope", LargeBinary, nullable=True),  # exact bytes, for replay
    Column("payload", LargeBinary, nullable=True),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("state", Text, nullable=False, server_default=text("'dead'")),
    Column("replays", Integer, nullable=False, server_default=text("0")),
    timestamp("first_failed_at"),
    timestamp("last_failed_at"),
    timestamp("created_at"),
    timestamp("replayed_at", nullable=True),
    # Recording is idempotent: the recorder may see one dead-stream entry twice after a crash.
    UniqueConstraint("dead_stream", "dead_entry_id"),
    one_of("kind", DEAD_KINDS, name="kind"),
    one_of("state", DEAD_STATES, name="state"),
    CheckConstraint("attempts > 0", name="attempts_positive"),
    Index("ix_dead_letters_topic_created_at", "topic", "created_at"),
    Index("ix_dead_letters_fingerprint", "fingerprint"),
    Index("ix_dead_letters_message_id", "message_id"),
)

dead_letter_replays = Table(
    "dead_letter_replays",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    # No foreign key: the audit outlives a purge of the dead letter itself.
    Column("dead_letter_id", BigInteger, nullable=False),
    Column("message_id", Text, nullable=True),
    Column("replayed_by", Text, nullable=False),
    Column("edits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    Column("target_stream", Text, nullable=False),
    Column("new_entry_id", Text, nullable=True),
    timestamp("replayed_at"),
    Index("ix_dead_letter_replays_dead_letter_id", "dead_letter_id"),
)
