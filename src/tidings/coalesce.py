"""Concurrent calls of one batch statement, merged: while one call is in flight, the calls that
arrive wait, then go out together as one.

A worker runs one consumer per partition. Each sends the same per-batch statements (claim the
idempotency keys, read the preferences), so with four partitions up to four copies of each
competed for the database and for the event loop, each with its own small batch. Merged, there
is at most one of each in flight: fewer, larger statements. (Not the intent claim: a caller
cancelled while it is in flight would leave its legs claimed, 'sending', with nobody to send
them. The legs a key claim takes for new messages are safe: their tokens are remembered first,
see tidings.pipelines.intents.)
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

    No call waits for a timer: a call that finds nothing in flight goes out at once. When the
    merged call fails, each of its callers' parts is tried again on its own (concurrently), so
    that one caller's bad items fail only that caller. A caller cancelled while it waits is
    left out of the next call; one cancelled while its call is in flight stops waiting, and
    the call goes on for the others: ``work`` must be harmless to complete for a caller that
    is gone (a read, or a write its caller's retry finds done).
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

    async def idle(self, within_s: float) -> None:
        """Return once no call is in flight or waiting (whatever became of them); after
        ``within_s``, cancel those still there (their callers get CancelledError)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while (runner := self._runner) is not None:
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait([runner], timeout=left)
            else:
                runner.cancel()
                await asyncio.wait([runner])

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
        outcomes: list[R | _Failed]
        try:
            try:
                outcomes = list(await self._work([items for items, _ in calls]))
            except Exception as exc:
                if len(calls) == 1:
                    outcomes = [_Failed(exc)]
                else:  # what failed may be one caller's items: each tries on its own
                    outcomes = await asyncio.gather(*(self._alone(items) for items, _ in calls))
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        if len(outcomes) != len(calls):  # work broke its contract: every caller is told, none hangs
            broken = RuntimeError(f"the merged call returned {len(outcomes)} results for"
                                  f" {len(calls)} calls")
            outcomes = [_Failed(broken)] * len(calls)
        for (_, future), outcome in zip(calls, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, _Failed):
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome)

    async def _alone(self, items: Sequence[K]) -> R | _Failed:
        try:
            [result] = await self._work([items])
        except Exception as exc:
            return _Failed(exc)
        return result


class _Failed:
    """A caller's part failed with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
