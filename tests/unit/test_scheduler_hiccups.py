"""Which errors the scheduler loop logs and retries (a server restarting) and which it raises."""

from __future__ import annotations

import asyncpg
import pytest
from redis.exceptions import BusyLoadingError, ReadOnlyError, TryAgainError
from sqlalchemy.exc import IntegrityError, InternalError, OperationalError

from tidings.scheduling.scheduler import hiccup


def _wrapped(kind: type[Exception], cause: Exception) -> Exception:
    """An error as SQLAlchemy's asyncpg dialect raises it: the driver's error is the cause of
    the DB-API error it is translated to."""
    try:
        try:
            raise cause
        except Exception as driver_error:
            raise RuntimeError(str(driver_error)) from driver_error
    except RuntimeError as orig:
        return kind("SELECT 1", {}, orig)


def test_a_connection_left_broken_by_a_restart_is_a_hiccup() -> None:
    broken = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress")

    assert hiccup(_wrapped(InternalError, broken))


@pytest.mark.parametrize("error", [
    OperationalError("SELECT 1", {}, RuntimeError("server closed the connection")),
    ConnectionResetError("reset by peer"),
    ReadOnlyError("You can't write against a read only replica."),  # a Redis failover
    BusyLoadingError("Redis is loading the dataset in memory"),
    TryAgainError("Multiple keys request during rehashing of slot"),
])
def test_a_lost_connection_is_a_hiccup(error: Exception) -> None:
    assert hiccup(error)


def test_a_statement_the_database_refused_is_not() -> None:
    refused = asyncpg.UniqueViolationError("duplicate key value violates unique constraint")

    assert not hiccup(_wrapped(IntegrityError, refused))
    assert not hiccup(ValueError("a bug"))
