"""Which database errors are worth retrying (the rows kept) and which refuse a row."""

from __future__ import annotations

import asyncpg
import pytest

from tidings.direct import transient

WAIT_AND_RETRY = [
    ConnectionResetError(), TimeoutError(), asyncpg.InterfaceError("closed"),
    asyncpg.PostgresConnectionError("gone"), asyncpg.CannotConnectNowError("starting"),
    asyncpg.AdminShutdownError("shutdown"), asyncpg.TooManyConnectionsError("full"),
    asyncpg.DeadlockDetectedError("deadlock"), asyncpg.SerializationError("serialize"),
    asyncpg.DiskFullError("disk full"), asyncpg.OutOfMemoryError("oom"),
    asyncpg.QueryCanceledError("statement timeout"),
    asyncpg.ReadOnlySQLTransactionError("standby"), asyncpg.LockNotAvailableError("lock"),
]
REFUSED = [
    asyncpg.ForeignKeyViolationError("fk"), asyncpg.UniqueViolationError("unique"),
    asyncpg.CheckViolationError("check"), asyncpg.ProgramLimitExceededError("index row size"),
    asyncpg.UndefinedTableError("no table"), ValueError("bad parameter"),
]


@pytest.mark.parametrize("exc", WAIT_AND_RETRY, ids=lambda e: type(e).__name__)
def test_a_database_that_cannot_do_it_now_is_transient(exc: BaseException) -> None:
    assert transient(exc)


@pytest.mark.parametrize("exc", REFUSED, ids=lambda e: type(e).__name__)
def test_a_statement_the_database_refuses_is_not(exc: BaseException) -> None:
    assert not transient(exc)
