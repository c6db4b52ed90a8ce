"""Alembic environment: runs on the connection and schema :mod:`tidings.migrate` hands over."""

from __future__ import annotations

from alembic import context

from tidings.errors import ConfigurationError
from tidings.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    # The alembic CLI would arrive here without a connection; only tidings.migrate brings one.
    raise ConfigurationError("run migrations with `tidings migrate`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=config.attributes["schema"],
    on_version_apply=config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
