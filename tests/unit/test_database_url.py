"""async_url: which database URLs tidings accepts, and that only their scheme changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import make_url

from tidings.database import async_url, create_engine, display_url
from tidings.errors import ConfigurationError

ACCEPTED = ("postgres", "postgresql", "postgresql+asyncpg")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        (
            "postgresql://postgres@127.0.0.1:5432/test",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        ),
        ("postgresql+asyncpg://h/db?ssl=require", "postgresql+asyncpg://h/db?ssl=require"),
        ("PostgreSQL://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_accepted_schemes_become_the_asyncpg_form(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_a_unix_socket_url_keeps_its_socket_directory() -> None:
    url = async_url("postgresql://postgres:@/tidings?host=/path/to/socketdir")

    parsed = make_url(url)
    assert parsed.drivername == "postgresql+asyncpg"
    assert parsed.database == "tidings"
    assert parsed.query == {"host": "/path/to/socketdir"}


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql+psycopg://u@h/db",
        "sqlite:///tidings.db",
        "redis://localhost:6379/0",
        "127.0.0.1:5432/test",
        "",
    ],
)
def test_other_urls_are_a_configuration_error_naming_the_accepted_schemes(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        async_url(url)

    message = str(raised.value)
    assert all(f"{scheme}://" in message for scheme in ACCEPTED)


def test_the_error_does_not_repeat_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        async_url("mysql://user:hunter2@h/db")

    assert "hunter2" not in str(raised.value)


_rest = st.text(st.characters(codec="utf-8"), max_size=60)
_scheme_case = st.sampled_from(ACCEPTED).flatmap(
    lambda s: st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(s, upper, strict=True))
    )
)


@given(scheme=_scheme_case, rest=_rest)
def test_only_the_scheme_changes(scheme: str, rest: str) -> None:
    assert async_url(f"{scheme}://{rest}") == f"postgresql+asyncpg://{rest}"


@given(scheme=st.sampled_from(ACCEPTED), rest=_rest)
def test_async_url_is_idempotent(scheme: str, rest: str) -> None:
    once = async_url(f"{scheme}://{rest}")
    assert async_url(once) == once


_other_scheme = st.from_regex(r"[a-z][a-z0-9+.\-]{0,15}", fullmatch=True).filter(
    lambda s: s not in ACCEPTED
)


@given(scheme=_other_scheme, rest=_rest)
def test_any_other_scheme_is_rejected(scheme: str, rest: str) -> None:
    with pytest.raises(ConfigurationError):
        async_url(f"{scheme}://{rest}")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://u:hunter2@h:5432/db", "postgresql://u@h:5432/db"),
        (
            "postgresql://postgres:@/tidings?host=/path/to/socketdir",
            "postgresql://postgres@/tidings?host=/path/to/socketdir",
        ),
    ],
)
def test_display_url_drops_the_password_and_keeps_the_rest_readable(url: str, shown: str) -> None:
    engine = create_engine(url, schema="tidings", pool_size=1, connect_timeout=1)

    assert display_url(engine) == shown
