"""The PostgreSQL engine: URL forms, a search_path per connection, a reachability check, and
text made storable."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateSchema

from tidings.errors import ConfigurationError, ConnectionFailed

_ASYNC_SCHEME = "postgresql+asyncpg"
# The engine carries its schema among its execution options, for connections made beside it.
SCHEMA_OPTION = "tidings_schema"
# ... and the URL's libpq options (sslmode, connect_timeout), which asyncpg's DSN takes as they are.
LIBPQ_OPTION = "tidings_libpq"
_ACCEPTED_SCHEMES = ("postgres", "postgresql", _ASYNC_SCHEME)


def async_url(url: str) -> str:
    """Return ``url`` in the ``postgresql+asyncpg://`` form SQLAlchemy needs.

    Only the scheme is rewritten: host, port, credentials and query (``?host=/socket/dir`` for a
    unix socket) pass through byte for byte, so nothing gets re-quoted on the way.
    """
    scheme, sep, rest = url.partition("://")
    accepted = ", ".join(f"{name}://" for name in _ACCEPTED_SCHEMES)
    # Name only the scheme: the rest of the URL may hold a password.
    if not sep:
        raise ConfigurationError(f"the database URL has no scheme: start it with one of {accepted}")
    if scheme.lower() not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"unsupported database URL scheme {scheme + sep!r}: use one of {accepted}"
        )
    return f"{_ASYNC_SCHEME}://{rest}"


def quote_ident(name: str) -> str:
    """Quote ``name`` as a PostgreSQL identifier, always, so any schema name is safe in SQL."""
    return '"' + name.replace('"', '""') + '"'


def create_engine(url: str, *, schema: str, pool_size: int, connect_timeout: float) -> AsyncEngine:
    """An async engine whose every connection resolves unqualified tables in ``schema``.

    The tables carry no schema of their own; the ``search_path`` set at connect time places them,
    so one database can hold several independent tidings installations.
    """
    try:
        parsed = make_url(async_url(url))
    except (ArgumentError, ValueError) as exc:  # e.g. a port that is not a number
        raise ConfigurationError(f"the database URL cannot be read ({exc}): check"
                                 " TIDINGS_DATABASE_URL") from None
    # libpq's options, as hosted PostgreSQL URLs carry them: asyncpg's connect() names them
    # otherwise (SQLAlchemy would pass them on as they are, and asyncpg refuse them).
    libpq = {k: v for k, v in parsed.query.items() if k in ("sslmode", "connect_timeout")}
    try:
        timeout = float(str(libpq.get("connect_timeout", connect_timeout)))
    except ValueError:
        raise ConfigurationError("the database URL's connect_timeout is not a number of"
                                 " seconds: check TIDINGS_DATABASE_URL") from None
    connect_args: dict[str, Any] = {
        "timeout": timeout,
        "server_settings": {"search_path": f"{quote_ident(schema)}, public"},
    }
    if "sslmode" in libpq:
        connect_args["ssl"] = str(libpq["sslmode"])
    return create_async_engine(
        parsed.difference_update_query(list(libpq)), pool_size=pool_size, pool_pre_ping=True,
        connect_args=connect_args, execution_options={SCHEMA_OPTION: schema, LIBPQ_OPTION: libpq},
    )


def schema_of(engine: AsyncEngine) -> str:
    """The schema ``engine``'s connections resolve tables in (see :func:`create_engine`)."""
    return str(engine.get_execution_options().get(SCHEMA_OPTION, "public"))


def display_url(engine: AsyncEngine) -> str:
    """The engine's URL as the user wrote it, minus the password: safe for logs and errors."""
    url = engine.url
    # URL.set() cannot clear a field, so build the URL afresh without the password.
    query = {k: "***" if k == "password" else v for k, v in url.query.items()}
    bare = URL.create("postgresql", url.username, None, url.host, url.port, url.database, query)
    # '/' is legal in a query; unescaped, a socket directory reads as the user wrote it.
    return bare.render_as_string().replace("%2F", "/").replace("%2A", "*")


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raise ConnectionFailed saying where and why if that is not possible."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except TypeError as exc:  # an option in the URL's query that asyncpg does not take
        raise ConfigurationError(
            f"the database URL {display_url(engine)} has an option PostgreSQL's driver does not"
            f" take ({exc}); tidings passes on host, sslmode and connect_timeout") from None
    except (SQLAlchemyError, OSError) as exc:
        raise ConnectionFailed(
            f"cannot reach PostgreSQL at {display_url(engine)}: {_reason(exc)}. "
            "Check TIDINGS_DATABASE_URL, or unset it to use the embedded server."
        ) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout"
    # Driver messages can span lines (DETAIL, HINT); the error must stay on one.
    return " ".join(str(exc).split()) or type(exc).__name__


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Create ``schema`` unless it exists."""
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema, if_not_exists=True))


# A NUL escape in JSON text: \u0000 after an even number of backslashes (an escaped backslash
# followed by "u0000" is six characters of text, not a NUL).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def holds_nul(encoded: bytes) -> bool:
    """Whether JSON text ``encoded`` has a NUL character in it, which jsonb refuses."""
    return _JSON_NUL.search(encoded) is not None


def storable(value: Any) -> Any:
    """JSON-able data PostgreSQL accepts: text and jsonb refuse the NUL character, which
    becomes U+FFFD (for what arrives from outside, e.g. a provider's reply: a notification's
    own text is refused at publish instead)."""
    if isinstance(value, str):
        value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes carried in a str
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {storable(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value
