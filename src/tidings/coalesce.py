"""Concurrent calls of one batch statement, merged: while one call is in flight, the calls that
arrive wait, then go out together as one.

A worker runs one consumer per partition. Each sends the same per-batch statements (claim the
idempotency keys, read the preferences, claim the intents), so with four partitions up to four
copies of each competed for the database and for the event loop, each with its own small
batch. Merged, there is at most one of each in flight: fewer, larger statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")


class Coalesced(Generic[K, R]):
    """``await coalesced(items)``: ``work`` run once for the items of every call waiting
    together — it gets each call's items, in the order they came, and returns each call's
    result in the same order.

    No call waits for a timer: a call that finds nothing in flight goes out at once. A failure
    of the merged call is raised to each of its callers. A caller cancelled while it waits is
    left out of the next call; one cancelled while its call is in flight stops waiting, and
    the call goes on for the others.
    """

    def __init__(self, work: Callable[[list[Sequence[K]]], Awaitable[list[R]]]) -> None:
        self._work = work
        self._waiting: list[tuple[Sequence[K], asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, items: Sequence[K]) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                calls = [(items, future) for items, future in self._waiting
                         if not future.done()]
                self._waiting = []
                if calls:
                    await self._call(calls)
        finally:
            self._runner = None
            for _, future in self._waiting:  # only left if this runner was cancelled
                future.cancel()
            self._waiting = []

    async def _call(self, calls: list[tuple[Sequence[K], asyncio.Future[R]]]) -> None:
        try:
            results = await self._work([items for items, _ in calls])
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        except Exception as exc:  # each caller sees it, as if it had called alone
            for _, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(calls, results, strict=True):
            if not future.done():
                future.set_result(result)
