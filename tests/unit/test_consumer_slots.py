"""An agent with concurrency > 1 runs a batch in slots by key; no slot outlives its batch."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from tidings import App, Message, Settings
from tidings.testing import MemoryTransport, running


class Job(BaseModel):
    n: int
    key: str


class RedisBlip(MemoryTransport):
    """Fails the first scheduling of a retry, as a Redis that went away mid-batch would."""

    failed = False

    async def retry_later(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("Redis went away mid-batch")
        return await super().retry_later(*args, **kwargs)


async def test_a_slot_failing_stops_its_batch_before_the_next_batch_of_a_key_starts() -> None:
    app = App("slots")
    jobs = app.topic("slots.jobs", model=Job, partitions=1)
    running_now: dict[str, int] = {}
    started: list[tuple[str, int]] = []
    overlaps: list[str] = []

    @app.agent(jobs, name="slots.work", concurrency=2)
    async def work(message: Message[Job]) -> None:
        job = message.value
        if (job.key, job.n) == ("a", 0) and message.deliveries == 1:
            raise ValueError("a failure whose retry cannot be scheduled")
        if job.key in running_now:
            overlaps.append(f"{job.key}{job.n} began while {job.key}{running_now[job.key]} ran")
        running_now[job.key] = job.n
        started.append((job.key, job.n))
        try:
            await asyncio.sleep(0.3 if job.n < 2 else 0.01)
        finally:  # cancelled too, when its batch stops
            del running_now[job.key]

    settings = Settings(namespace="slots", block_ms=20, claim_idle_ms=1000)
    async with running(app, settings, transport=RedisBlip()) as harness:
        await jobs.send_many([Job(n=0, key="a"), Job(n=0, key="d"), Job(n=1, key="d")],
                             key=lambda job: job.key)
        await asyncio.sleep(0.1)
        await jobs.send(Job(n=2, key="d"), key="d")  # the next batch, the same key
        await asyncio.sleep(2.0)
        await harness.drain()

    assert overlaps == []
    d_order = [n for key, n in started if key == "d"]
    assert d_order.index(2) > d_order.index(0), d_order
