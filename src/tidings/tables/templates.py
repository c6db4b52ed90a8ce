"""Message templates: one row per (tenant, name, channel, locale), its parts and its version.

``tenant`` is ``''`` for a template every tenant shares; a tenant's own row overrides it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Identity,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from tidings.tables.common import metadata, one_of, timestamp

TEMPLATE_CHANNELS = ("email", "sms", "push", "webhook")

templates = Table(
    "templates",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # '' and not NULL for the shared template: the unique key must find it again on upsert.
    Column("tenant", Text, nullable=False, server_default=text("''")),
    Column("name", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("locale", Text, nullable=False),
    Column("subject", Text, nullable=True),
    Column("body", Text, nullable=False),
    Column("html", Text, nullable=True),
    Column("title", Text, nullable=True),
    # Bumped by every upsert; renderers recompile when it moves.
    Column("version", Integer, nullable=False, server_default=text("1")),
    timestamp("created_at"),
    timestamp("updated_at", onupdate=True),
    one_of("channel", TEMPLATE_CHANNELS, name="channel"),
    CheckConstraint("body <> ''", name="body_not_empty"),
    CheckConstraint("version > 0", name="version_positive"),
    # Also serves the lookup, which filters on (tenant, name, channel) and a few locales.
    UniqueConstraint("tenant", "name", "channel", "locale"),
)
