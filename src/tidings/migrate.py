"""Schema migrations: Alembic, configured in code, run per schema under an advisory lock."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema

from tidings.database import quote_ident
from tidings.errors import ConfigurationError, MigrationsPending

_SCRIPTS = "tidings:migrations"
_Command = Callable[[Config, str], None]

# Alembic installs its `context` and `op` proxies as module globals for the length of a run, so
# two runs interleaving in one event loop would send each other's DDL down the wrong connection.
_runs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def head() -> str:
    """The newest revision this version of tidings ships."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "tidings ships at least one migration"
    return revision


def revisions() -> list[str]:
    """Every revision this tidings ships, oldest first."""
    scripts = ScriptDirectory.from_config(_config()).walk_revisions()
    return [script.revision for script in reversed(list(scripts))]


async def current(engine: AsyncEngine, schema: str) -> str | None:
    """The revision ``schema`` is at; None if it was never migrated (or does not exist)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision, schema)


async def check_current(engine: AsyncEngine, schema: str) -> None:
    """Raise MigrationsPending unless ``schema`` is at :func:`head`."""
    found, needed = await current(engine, schema), head()
    if found == needed:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if found is not None and found not in known:
        raise MigrationsPending(
            f"the database schema {schema} is at revision {found}, which this tidings does not "
            f"know (it needs {needed}): a newer tidings migrated it, so upgrade tidings"
        )
    raise MigrationsPending(
        f"the database schema {schema} is at revision {found or 'none'} but this tidings "
        f"needs {needed}: run `tidings migrate`"
    )


async def upgrade(engine: AsyncEngine, schema: str, revision: str = "head") -> list[str]:
    """Migrate ``schema`` (created if missing) up to ``revision``; return the revisions applied.

    Safe to run from several processes at once: one migrates, the others find nothing to do.
    """
    return await _run(engine, schema, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, schema: str, revision: str) -> list[str]:
    """Migrate ``schema`` down to ``revision`` (``"base"`` = empty); return the ones undone."""
    return await _run(engine, schema, command.downgrade, revision)


async def _run(engine: AsyncEngine, schema: str, alembic: _Command, revision: str) -> list[str]:
    # This process lock first, then the database one: the other order could deadlock two tasks
    # of this process on each other.
    async with _run_lock(), engine.connect() as conn:
        # Transaction-scoped, so the commit or rollback ending the migration releases it and
        # it can never stay behind on a pooled connection. All the DDL is in that transaction.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('tidings.migrate.' || :schema))"),
            {"schema": schema},
        )
        # Under the lock: two concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
        await conn.execute(CreateSchema(schema, if_not_exists=True))
        await conn.execute(text(f"SET LOCAL search_path TO {quote_ident(schema)}, public"))
        applied = await conn.run_sync(_run_alembic, schema, alembic, revision)
        await conn.commit()
    return applied


def _run_lock() -> asyncio.Lock:
    return _runs.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _run_alembic(conn: Connection, schema: str, alembic: _Command, revision: str) -> list[str]:
    applied: list[str] = []

    def record(*, step: MigrationInfo, **_: object) -> None:
        # Going down, up_revision_id is the revision being undone.
        if step.up_revision_id is not None:
            applied.append(step.up_revision_id)

    try:
        alembic(_config(schema, conn, record), revision)
    except CommandError as exc:  # e.g. a revision that does not exist
        raise ConfigurationError(f"cannot migrate to {revision!r}: {exc}") from None
    return applied


def _current_revision(conn: Connection, schema: str) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    return context.get_current_revision()


def _config(
    schema: str | None = None,
    conn: Connection | None = None,
    on_version_apply: Callable[..., None] | None = None,
) -> Config:
    # No alembic.ini: everything env.py needs travels in config.attributes.
    config = Config()
    config.set_main_option("script_location", _SCRIPTS)
    config.attributes.update(schema=schema, connection=conn, on_version_apply=on_version_apply)
    return config
