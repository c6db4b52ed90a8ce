"""Concurrent calls of one batch statement, merged while one is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from tidings.coalesce import Coalesced


class Work:
    """Records each merged call; holds it until ``gate`` is set; refuses a call in which
    ``refuse`` is true of some item."""

    def __init__(self, *, refuse: Callable[[int], bool] = lambda n: False) -> None:
        self.calls: list[list[list[int]]] = []
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()  # one per call that started
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse = refuse

    async def __call__(self, calls: list[Sequence[int]]) -> list[int]:
        self.calls.append([list(items) for items in calls])
        self.arrivals.put_nowait(None)
        await self.gate.wait()
        for items in calls:
            for n in items:
                if self.refuse(n):
                    raise ValueError(f"refused {n}")
        return [sum(items) for items in calls]


async def behind_one_in_flight(
    work: Work, *later: list[int]
) -> tuple[asyncio.Task[int], list[asyncio.Task[int]]]:
    """A call of [1] held in flight (``work``'s gate closed), and the calls of ``later`` made
    meanwhile, waiting."""
    work.gate.clear()
    coalesced = Coalesced(work)
    first = asyncio.create_task(coalesced([1]))
    await work.arrivals.get()
    others = [asyncio.create_task(coalesced(items)) for items in later]
    await asyncio.sleep(0.01)
    return first, others


async def test_a_call_with_nothing_in_flight_goes_out_alone() -> None:
    work = Work()
    coalesced = Coalesced(work)

    assert await coalesced([1, 2]) == 3
    assert work.calls == [[[1, 2]]]


async def test_calls_made_while_one_is_in_flight_go_out_together_each_with_its_result() -> None:
    work = Work()
    first, (second, third) = await behind_one_in_flight(work, [2, 3], [4])
    work.gate.set()

    assert list(await asyncio.gather(first, second, third)) == [1, 5, 4]
    assert work.calls == [[[1]], [[2, 3], [4]]]


async def test_when_the_merged_call_fails_each_part_is_tried_on_its_own() -> None:
    work = Work(refuse=lambda n: n < 0)
    first, others = await behind_one_in_flight(work, [2], [-3], [4])
    work.gate.set()

    assert await first == 1
    assert await others[0] == 2
    with pytest.raises(ValueError, match="refused -3"):
        await others[1]
    assert await others[2] == 4
    assert work.calls == [[[1]], [[2], [-3], [4]], [[2]], [[-3]], [[4]]]


async def test_a_call_alone_that_fails_is_not_tried_again() -> None:
    work = Work(refuse=lambda n: True)
    coalesced = Coalesced(work)

    with pytest.raises(ValueError, match="refused 1"):
        await coalesced([1])
    assert work.calls == [[[1]]]
    work.refuse = lambda n: False
    assert await coalesced([7]) == 7, "a failure does not stop later calls"


async def test_a_caller_cancelled_while_waiting_is_left_out_of_the_next_call() -> None:
    work = Work()
    first, (leaving, staying) = await behind_one_in_flight(work, [2], [3])
    leaving.cancel()
    work.gate.set()

    assert await first == 1
    assert await staying == 3
    assert leaving.cancelled()
    assert work.calls == [[[1]], [[3]]]


async def test_a_caller_cancelled_in_flight_does_not_stop_the_call_for_the_others() -> None:
    work = Work()
    first, (leaving, staying) = await behind_one_in_flight(work, [2], [3])
    work.gate.set()  # lets the first call finish; the merged second one then waits
    work.gate.clear()
    await work.arrivals.get()  # the merged call is in flight
    leaving.cancel()
    await asyncio.sleep(0)
    work.gate.set()

    assert await first == 1
    assert await staying == 3
    assert leaving.cancelled()
    assert work.calls == [[[1]], [[2], [3]]]


async def test_work_returning_the_wrong_number_of_results_fails_every_caller() -> None:
    async def short(batches: list[Sequence[int]]) -> list[int]:
        await asyncio.sleep(0.01)
        return [sum(batches[0])]  # one result, whatever the number of calls

    coalesced = Coalesced(short)
    first = asyncio.create_task(coalesced([1]))
    await asyncio.sleep(0)
    second, third = asyncio.create_task(coalesced([2])), asyncio.create_task(coalesced([3]))

    outcomes = await asyncio.wait_for(
        asyncio.gather(first, second, third, return_exceptions=True), 2)

    assert outcomes[0] == 1
    assert all(isinstance(o, RuntimeError) and "returned 1 results for 2 calls" in str(o)
               for o in outcomes[1:])
