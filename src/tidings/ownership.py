"""Partition ownership: each partition of an agent's topic is read by one process at a time.

A process joins the agent's member set, then holds a lease per partition it owns and renews it.
Each process aims for ceil(partitions / live members), taking free partitions and handing
back extras, so work spreads as processes come and go and a crashed process's partitions are
picked up when its leases expire. One reader per partition is what keeps per-key order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from typing import Any

from tidings import keys
from tidings.agent import Agent
from tidings.consumer import PartitionConsumer
from tidings.settings import Settings
from tidings.transport import Transport

log = logging.getLogger("tidings.ownership")


class PartitionOwner:
    """Runs the partition consumers one agent owns in this process, rebalancing as it goes."""

    def __init__(
        self, agent: Agent[Any], consumer: str, transport: Transport, settings: Settings
    ) -> None:
        self.agent = agent
        self.consumer = consumer
        self.transport = transport
        self.settings = settings
        topic = agent.topic
        self.members_key = keys.members(topic.app.namespace, topic.name, agent.group)
        self.running: dict[int, tuple[PartitionConsumer, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        # Start the scan at a different partition in each process so they rarely collide.
        self._offset = zlib.crc32(consumer.encode())

    @property
    def owned(self) -> list[int]:
        return sorted(self.running)

    async def run(self) -> None:
        interval = self.settings.lease_ttl_ms / 3000
        while not self._stopping.is_set():
            await self.rebalance()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def rebalance(self) -> None:
        ttl = self.settings.lease_ttl_ms
        alive = await self.transport.join(self.members_key, self.consumer, ttl)
        await self._reap_finished()
        for partition in list(self.running):
            lease = self.agent.topic.keys(partition).lease(self.agent.group)
            if not await self.transport.renew_lease(lease, self.consumer, ttl):
                log.warning("%s lost partition %d of %s", self.consumer, partition,
                            self.agent.topic.name)
                await self._stop_partition(partition, release=False)
        partitions = self.agent.topic.partitions
        target = math.ceil(partitions / max(alive, 1))
        for partition in sorted(self.running, reverse=True)[: max(len(self.running) - target, 0)]:
            await self._stop_partition(partition, release=True)
        for step in range(partitions):
            if len(self.running) >= target:
                break
            partition = (self._offset + step) % partitions
            if partition in self.running:
                continue
            lease = self.agent.topic.keys(partition).lease(self.agent.group)
            if await self.transport.acquire_lease(lease, self.consumer, ttl):
                await self._start_partition(partition)

    async def _reap_finished(self) -> None:
        for partition, (_, task) in list(self.running.items()):
            if task.done():
                del self.running[partition]
                if not task.cancelled() and task.exception() is not None:
                    log.error("consumer of partition %d of %s crashed: %r", partition,
                              self.agent.topic.name, task.exception())
                lease = self.agent.topic.keys(partition).lease(self.agent.group)
                await self.transport.release_lease(lease, self.consumer)

    async def _start_partition(self, partition: int) -> None:
        reader = PartitionConsumer(
            self.agent, partition, self.consumer, self.transport, self.settings
        )
        await reader.start()
        task = asyncio.create_task(reader.run(), name=f"{self.agent.name}[{partition}]")
        self.running[partition] = (reader, task)
        log.debug("%s took partition %d of %s", self.consumer, partition, self.agent.topic.name)

    async def _stop_partition(self, partition: int, *, release: bool) -> None:
        reader, task = self.running.pop(partition)
        reader.stop()
        await self._finish(task)
        if release:
            lease = self.agent.topic.keys(partition).lease(self.agent.group)
            await self.transport.release_lease(lease, self.consumer)

    async def _finish(self, task: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), self.settings.shutdown_timeout_s)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception as exc:
            log.error("consumer stopped with an error: %r", exc)

    def cancel_now(self) -> None:
        """Cancel in-flight handlers; their messages are handed back, not lost."""
        for _, task in self.running.values():
            task.cancel()

    async def stop(self) -> None:
        """Stop reading, let in-flight batches finish within the deadline, hand partitions back."""
        self._stopping.set()
        for reader, _ in self.running.values():
            reader.stop()
        deadline = self.settings.shutdown_timeout_s
        tasks = [task for _, task in self.running.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for partition in list(self.running):
            lease = self.agent.topic.keys(partition).lease(self.agent.group)
            await self.transport.release_lease(lease, self.consumer)
        self.running.clear()
        await self.transport.leave(self.members_key, self.consumer)
