"""Partition ownership: each partition of an agent's topic is read by one process at a time.

A process joins the agent's member set, then holds a lease per partition it owns and renews
it. Each process aims for ceil(partitions / live members), taking free partitions and handing
back extras, so work spreads as processes come and go and a crashed process's partitions are
picked up when its leases expire. One reader per partition is what keeps per-key order.

Leases are renewed for as long as a partition's reader runs, including while it finishes its
last batch after being told to stop; a reader whose lease could not be renewed in time stops
by itself, so two processes never keep reading one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from typing import Any

from tidings import keys
from tidings.agent import Agent
from tidings.consumer import PartitionConsumer
from tidings.settings import Settings
from tidings.tasks import being_cancelled
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
        self.leaving: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._halt = asyncio.Event()
        self._interval = settings.lease_ttl_ms / 3000
        # Start the scan at a different partition in each process so they rarely collide.
        self._offset = zlib.crc32(consumer.encode())

    @property
    def owned(self) -> list[int]:
        return sorted(self.running)

    def _lease(self, partition: int) -> str:
        return self.agent.topic.keys(partition).lease(self.agent.group)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Take a first share of the partitions, then keep rebalancing in the background."""
        await self.rebalance()
        self._loop = asyncio.create_task(self._run(), name=f"owner:{self.agent.name}")

    async def _run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), self._interval)
            if self._halt.is_set():
                return
            try:
                await self.rebalance()
            except Exception as exc:  # Redis away: readers stop themselves if leases lapse
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                log.error("rebalancing %s failed (%s: %s); retrying", self.agent.name,
                          type(exc).__name__, exc)

    async def stop(self) -> None:
        """Stop rebalancing, let in-flight batches finish within the deadline (leases kept
        alive meanwhile), hand the partitions back, and leave the member set."""
        if self._loop is not None:
            # Ask the loop to end after its current rebalance rather than cancelling it midway
            # (a half-done acquisition would hold a lease with no reader until it expires).
            self._halt.set()
            _, late = await asyncio.wait([self._loop], timeout=self._interval * 3)
            for task in late:
                task.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        for partition in list(self.running):
            self._leave(partition)
        renewer = asyncio.create_task(self._renew_while_leaving())
        try:
            await asyncio.gather(*self.leaving.values(), return_exceptions=True)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.transport.leave(self.members_key, self.consumer)

    def cancel_now(self) -> None:
        """Cancel in-flight handlers; their messages are handed back, not lost."""
        for _, task in self.running.values():
            task.cancel()
        for task in self.leaving.values():
            task.cancel()

    # -- rebalancing ----------------------------------------------------------------------

    async def rebalance(self) -> None:
        ttl = self.settings.lease_ttl_ms
        alive = await self.transport.join(self.members_key, self.consumer, ttl)
        await self._reap_finished()
        await self._renew()
        partitions = self.agent.topic.partitions
        target = math.ceil(partitions / max(alive, 1))
        for partition in sorted(self.running, reverse=True)[: max(len(self.running) - target, 0)]:
            self._leave(partition)
        for step in range(partitions):
            if len(self.running) >= target:
                break
            partition = (self._offset + step) % partitions
            if partition in self.running or partition in self.leaving:
                continue
            if await self.transport.acquire_lease(self._lease(partition), self.consumer, ttl):
                await self._start_partition(partition)

    async def _renew(self) -> None:
        partitions = [*self.running, *self.leaving]
        if not partitions:
            return
        ttl = self.settings.lease_ttl_ms
        asked = time.monotonic()
        renewed = await self.transport.renew_leases(
            [self._lease(p) for p in partitions], self.consumer, ttl
        )
        for partition, ok in zip(partitions, renewed, strict=True):
            entry = self.running.get(partition)
            if entry is None:
                continue
            if ok:
                entry[0].lease_until = asked + ttl / 1000
            else:
                log.warning("%s lost partition %d of %s", self.consumer, partition,
                            self.agent.topic.name)
                self._leave(partition)

    async def _renew_while_leaving(self) -> None:
        while self.leaving:
            try:
                await self._renew()
            except Exception as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                log.error("renewing leases while stopping failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def _reap_finished(self) -> None:
        for partition, (_, task) in list(self.running.items()):
            if task.done():
                del self.running[partition]
                if not task.cancelled() and task.exception() is not None:
                    log.error("consumer of partition %d of %s crashed: %r", partition,
                              self.agent.topic.name, task.exception())
                await self.transport.release_lease(self._lease(partition), self.consumer)

    async def _start_partition(self, partition: int) -> None:
        reader = PartitionConsumer(
            self.agent, partition, self.consumer, self.transport, self.settings,
            policy=self.agent.topic.app.retry_policy(self.agent),
        )
        reader.lease_until = time.monotonic() + self.settings.lease_ttl_ms / 1000
        try:
            await reader.start()
        except BaseException:
            await self.transport.release_lease(self._lease(partition), self.consumer)
            raise
        task = asyncio.create_task(reader.run(), name=f"{self.agent.name}[{partition}]")
        self.running[partition] = (reader, task)
        log.debug("%s took partition %d of %s", self.consumer, partition, self.agent.topic.name)

    def _leave(self, partition: int) -> None:
        """Stop a partition's reader in the background; its lease is renewed until it is done,
        then released."""
        reader, task = self.running.pop(partition)
        reader.stop()
        self.leaving[partition] = asyncio.create_task(self._finish(partition, task))

    async def _finish(self, partition: int, task: asyncio.Task[None]) -> None:
        try:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.shutdown_timeout_s)
            except TimeoutError:
                task.cancel()
            except asyncio.CancelledError:
                task.cancel()
                raise
            except Exception as exc:
                log.error("consumer of partition %d of %s stopped with an error: %r",
                          partition, self.agent.topic.name, exc)
            finally:
                await asyncio.gather(task, return_exceptions=True)
        finally:
            self.leaving.pop(partition, None)
            with contextlib.suppress(Exception):
                await self.transport.release_lease(self._lease(partition), self.consumer)
