"""Hot-path SQL straight on asyncpg: the statements the pipeline runs for every batch.

SQLAlchemy's async layer runs every call through a greenlet, pings a connection when it is
checked out and sends BEGIN and COMMIT as round trips of their own. For the few statements the
notification pipeline runs per batch (ledger writes, idempotency and intent claims) a plain
asyncpg pool moved the inline pipeline's drain from ≈4 100 to ≈5 500 notifications/s (a script
draining 20 000 three times, 2-core machine). Everything else — migrations, stores, reports,
the CLI — keeps using the engine.

Statements are written with ``:name`` parameters, as for SQLAlchemy's ``text()``, and bound
from a mapping; :class:`Statement` turns them into asyncpg's ``$n`` form once. Many rows go as
one JSON parameter (:func:`json_param`) rather than a PostgreSQL array per column, whose every
element asyncpg type-checks on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.database import LIBPQ_OPTION, async_url, quote_ident, schema_of

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL with ``:name`` parameters, kept in asyncpg's positional form."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> Statement:
        """``:name`` → ``$n`` (the same name, the same number); ``::type`` casts stay."""
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        return cls(_PARAMETER.sub(number, source), tuple(names))

    def bind(self, params: Mapping[str, Any]) -> list[Any]:
        """The arguments in order; a missing one is a KeyError naming it."""
        return [params[name] for name in self.names]


async def _no_reset(connection: asyncpg.Connection) -> None:
    """These statements leave no session state behind: nothing to reset on release."""


def json_param(value: Any) -> str:
    """``value`` as one JSON text parameter (expand it in SQL with ``json_to_recordset`` or
    ``json_array_elements``). A naive datetime is taken as UTC; tidings records aware ones."""
    return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC).decode()


# SQLSTATEs that say the database cannot do it now, not that it refuses the statement: the
# classes connection exception (08), transaction rollback (40: deadlock, serialization),
# insufficient resources (53: disk full, out of memory, too many connections), operator
# intervention (57: statement timeout, shutdown, starting up) and system error (58: I/O);
# a read-only transaction (25006: a standby, as during a failover) and a lock not available.
_RETRY_CLASSES = ("08", "40", "53", "57", "58")
_RETRY_STATES = frozenset({"25006", "55P03"})


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached, went away or could not do it
    now (worth retrying), rather than that it refused the statement (a row it rejects).

    asyncpg's InternalClientError is one: a connection whose session the server ended mid-call
    (a restart) can be left believing a call is still in progress, and says so ("cannot
    switch to state 12; another operation (2) is in progress") for what is sent on it next.
    Taken for a refusal, it had a ledger row dropped as if the database had rejected it."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError
                  | asyncpg.InternalClientError):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (state[:2] in _RETRY_CLASSES or state in _RETRY_STATES)


class DirectPool:
    """asyncpg connections to the engine's database and schema, opened on first use."""

    def __init__(
        self, url: str, *, schema: str, size: int = 4, connect_timeout: float = 5.0
    ) -> None:
        # asyncpg takes the plain postgresql:// form of the same URL.
        self._dsn = "postgresql://" + async_url(url).partition("://")[2]
        self._schema = schema
        self._size = size
        self._timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    @classmethod
    def of(cls, engine: AsyncEngine, *, size: int = 4, connect_timeout: float = 5.0) -> DirectPool:
        """A pool to the database and schema ``engine`` connects to (embedded or configured)."""
        libpq = engine.get_execution_options().get(LIBPQ_OPTION, {})
        url = (engine.url.set(drivername="postgresql").update_query_dict(libpq)
               .render_as_string(hide_password=False))
        return cls(url, schema=schema_of(engine), size=size, connect_timeout=connect_timeout)

    async def _get(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise asyncpg.InterfaceError("the direct pool is closed")
            if self._pool is None:
                # No floor of idle connections: asyncpg would keep reconnecting to restore it
                # while the server is away, logging a traceback for every try.
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=self._size, timeout=self._timeout,
                    server_settings={"search_path": f"{quote_ident(self._schema)}, public"},
                    reset=_no_reset,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one left broken by a server that ended its session mid-call
        (see :func:`transient`) is closed, so the pool opens a new one instead of handing it
        out again."""
        pool = await self._get()
        async with pool.acquire() as connection:
            try:
                yield connection
            except asyncpg.InternalClientError:
                connection.terminate()
                raise

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
        """Run one statement on its own (autocommit) and return its rows."""
        async with self._connection() as connection:
            rows: list[Any] = await connection.fetch(statement.sql, *statement.bind(params))
        return rows

    async def execute(self, statement: Statement, params: Mapping[str, Any]) -> None:
        """Run one statement on its own (autocommit)."""
        async with self._connection() as connection:
            await connection.execute(statement.sql, *statement.bind(params))

    async def aclose(self) -> None:
        """Close every connection; the pool takes no more work."""
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
