"""The runtime's behaviour suite on the in-memory transport."""

from __future__ import annotations

import asyncio

import pytest

from runtime_behaviour import AGENT, TOPIC, Connect, Job, RuntimeBehaviour, pending, reader, until
from tidings import App, Priority, Settings
from tidings.batch import Batch
from tidings.testing import MemoryTransport, running


class TestRuntimeInMemory(RuntimeBehaviour):
    @pytest.fixture
    def connect(self) -> Connect:
        store = MemoryTransport()
        return lambda: store


async def test_cancelled_while_finishing_its_deferred_batch_a_reader_still_acks_and_hands_back(
) -> None:
    # Stopping, the reader waits for its deferred batch, whose ledger write never ends (the
    # database is away); the shutdown deadline cancels it. The batch settled before it must
    # still be acked, and the deferred one handed back at once, not left to the claim timeout.
    second_sent, go_on, never = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[int] = []
    app = App("suite")
    jobs = app.topic(TOPIC, model=Job, partitions=1)

    async def quick() -> None:
        return None

    async def stuck() -> None:
        await never.wait()

    @app.agent(jobs, name=AGENT, batch=True)
    async def record(batch: Batch[Job]) -> None:
        handled.extend(m.value.n for m in batch)
        if handled == [1]:
            await second_sent.wait()
            batch.defer(quick)
        else:
            await go_on.wait()
            batch.defer(stuck)

    transport = MemoryTransport()
    settings = Settings(namespace="suite", block_ms=50, claim_idle_ms=5000,
                        shutdown_timeout_s=0.3)
    async with running(app, settings, transport=transport) as harness:
        await jobs.send(Job(n=1))
        await until(lambda: handled == [1])
        await jobs.send(Job(n=2))
        second_sent.set()
        await until(lambda: handled == [1, 2])
        consumer = reader(harness, 0)
        stopping = asyncio.create_task(harness.owners[0].stop())
        await until(lambda: consumer.stopping)
        go_on.set()
        await stopping
        assert await pending(app) == 1
        group = transport.streams[jobs.keys(0).lane(Priority.NORMAL)].groups[AGENT]
        assert [p.delivered_at < 0 for p in group.pending.values()] == [True], "not handed back"
