"""Concurrent calls of one batch statement, merged while one is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tidings.coalesce import Coalesced


class Work:
    """Records each merged call; holds it until released when ``gate`` is set."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[list[list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail

    async def __call__(self, calls: list[Sequence[int]]) -> list[int]:
        self.calls.append([list(items) for items in calls])
        await self.gate.wait()
        if self.fail:
            raise ValueError("refused")
        return [sum(items) for items in calls]


async def test_a_call_with_nothing_in_flight_goes_out_alone() -> None:
    work = Work()
    coalesced = Coalesced(work)

    assert await coalesced([1, 2]) == 3
    assert work.calls == [[[1, 2]]]


async def test_calls_made_while_one_is_in_flight_go_out_together_each_with_its_result() -> None:
    work = Work()
    work.gate.clear()
    coalesced = Coalesced(work)
    first = asyncio.create_task(coalesced([1]))
    await asyncio.sleep(0.01)  # the first call is in flight
    second = asyncio.create_task(coalesced([2, 3]))
    third = asyncio.create_task(coalesced([4]))
    await asyncio.sleep(0.01)
    work.gate.set()

    assert await asyncio.gather(first, second, third) == [1, 5, 4]
    assert work.calls == [[[1]], [[2, 3], [4]]]


async def test_a_failure_of_the_merged_call_reaches_each_caller() -> None:
    work = Work(fail=True)
    work.gate.clear()
    coalesced = Coalesced(work)
    first = asyncio.create_task(coalesced([1]))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(coalesced([n])) for n in (2, 3)]
    await asyncio.sleep(0.01)
    work.gate.set()

    for task in (first, *others):
        with pytest.raises(ValueError, match="refused"):
            await task
    work.fail = False
    assert await coalesced([7]) == 7, "a failure does not stop later calls"


async def test_a_caller_cancelled_while_waiting_is_left_out_of_the_next_call() -> None:
    work = Work()
    work.gate.clear()
    coalesced = Coalesced(work)
    first = asyncio.create_task(coalesced([1]))
    await asyncio.sleep(0.01)
    leaving = asyncio.create_task(coalesced([2]))
    staying = asyncio.create_task(coalesced([3]))
    await asyncio.sleep(0.01)
    leaving.cancel()
    work.gate.set()

    assert await first == 1
    assert await staying == 3
    assert leaving.cancelled()
    assert work.calls == [[[1]], [[3]]]


async def test_a_caller_cancelled_in_flight_does_not_stop_the_call_for_the_others() -> None:
    work = Work()
    work.gate.clear()
    coalesced = Coalesced(work)
    first = asyncio.create_task(coalesced([1]))
    await asyncio.sleep(0.01)
    leaving = asyncio.create_task(coalesced([2]))
    staying = asyncio.create_task(coalesced([3]))
    await asyncio.sleep(0)  # both waiting; the first call still in flight
    work.gate.set()
    await asyncio.sleep(0)
    leaving.cancel()

    assert await first == 1
    assert await staying == 3
    assert work.calls == [[[1]], [[2], [3]]]
