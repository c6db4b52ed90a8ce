"""Concurrent calls of one batch statement, merged: while one call is in flight, the calls that
arrive wait, then go out together as one.

A worker runs one consumer per partition. Each sends the same per-batch statements (claim the
idempotency keys, read the preferences, claim the intents), so with four partitions up to four
copies of each competed for the database and for the event loop, each with its own small
batch. Merged, there is at most one of each in flight: fewer, larger statements. What a merged
call did for a caller cancelled meanwhile can be undone (``abandoned``: the intent claim
releases the legs it claimed, which nobody will send).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

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
    the call goes on for the others. What it did for the caller that left is handed to
    ``abandoned(items, result)``, to undo what must not stay (without it, ``work`` must be
    harmless to complete for a caller that is gone: a read, or a write its retry finds done).
    """

    def __init__(
        self,
        work: Callable[[list[Sequence[K]]], Awaitable[list[R]]],
        abandoned: Callable[[Sequence[K], R], Awaitable[None]] | None = None,
    ) -> None:
        self._work = work
        self._abandoned = abandoned
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
            outcomes = await self._outcomes(calls)
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        for (items, future), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, _Skipped):
                continue
            if isinstance(outcome, _Failed):
                if not future.done():
                    future.set_exception(outcome.error)
            elif not future.done():
                future.set_result(outcome)
            elif self._abandoned is not None:
                await self._give_back(items, outcome)

    async def _outcomes(
        self, calls: list[tuple[Sequence[K], asyncio.Future[R]]]
    ) -> list[R | _Failed | _Skipped]:
        try:
            return list(await self._work([items for items, _ in calls]))
        except Exception as exc:
            if len(calls) == 1:
                return [_Failed(exc)]
        # What failed may be one caller's items: each tries on its own (not the ones gone).
        return await asyncio.gather(*(
            self._alone(items) if not future.done() else _skip() for items, future in calls))

    async def _give_back(self, items: Sequence[K], result: R) -> None:
        assert self._abandoned is not None
        try:
            await self._abandoned(items, result)
        except Exception as exc:  # the runner goes on for the callers still waiting
            log.error("could not undo a merged call whose caller left (%s: %s)",
                      type(exc).__name__, exc)

    async def _alone(self, items: Sequence[K]) -> R | _Failed:
        try:
            [result] = await self._work([items])
        except Exception as exc:
            return _Failed(exc)
        return result


class _Skipped:
    """A caller that left before its part was tried on its own."""


_SKIPPED = _Skipped()


async def _skip() -> _Skipped:
    return _SKIPPED


class _Failed:
    """A caller's part failed with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
