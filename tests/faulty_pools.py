"""DirectPool stand-ins that misbehave as a database does when it restarts or is loaded, for
tests of what the ledger and the intent claims do then (a seam, not a patch)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tidings.direct import DirectPool
from tidings.pipelines.intents import Intents


class LostReplies(DirectPool):
    """Runs each query, then loses its reply, as a connection broken by a database restart
    does after the commit; loses each other statement before it is sent."""

    def __init__(self, real: DirectPool) -> None:
        self._real = real

    async def fetch(self, statement: Any, params: Any) -> list[Any]:
        await self._real.fetch(statement, params)
        raise ConnectionResetError("connection lost before the reply")

    async def execute(self, statement: Any, params: Any) -> None:
        raise ConnectionResetError("connection lost before the statement was sent")


class Unreachable(DirectPool):
    """A database that cannot be reached: every statement fails before it is sent."""

    def __init__(self) -> None:
        """No pool behind it (DirectPool's own would connect on first use)."""

    async def fetch(self, statement: Any, params: Any) -> list[Any]:
        raise ConnectionRefusedError("the database is unreachable")

    async def execute(self, statement: Any, params: Any) -> None:
        raise ConnectionRefusedError("the database is unreachable")


class SlowPool(DirectPool):
    """Runs each statement after a pause, as a database under load does."""

    def __init__(self, real: DirectPool) -> None:
        self._real = real

    async def fetch(self, statement: Any, params: Any) -> list[Any]:
        return await self._real.fetch(statement, params)

    async def execute(self, statement: Any, params: Any) -> None:
        await asyncio.sleep(0.3)
        await self._real.execute(statement, params)


async def lose_the_reply(intents: Intents, real: DirectPool,
                         call: Callable[[], Awaitable[object]]) -> None:
    """Run ``call`` on ``intents`` with the reply lost, then give it back ``real``."""
    intents._direct = LostReplies(real)
    with pytest.raises(ConnectionResetError):
        await call()
    intents._direct = real
