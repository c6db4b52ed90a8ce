"""Consuming one partition: its lanes read (tidings.lanes), ordered per-key handling, ack,
retry, reclaim, trim.

A batch handler may defer its batch's last work (``Batch.defer``, e.g. its ledger write): the
next batch is read and handled while it runs, and the deferred batch is published and acked
when it is done, before the next one is. One batch at most is deferred at a time.

A failed message is retried by its policy: parked in the group's delay set (a sorted set under
the partition's hash tag) and moved to the group's retry stream when due, atomically, by this
consumer; that stream is read as a fourth lane. Past its attempts, or failing in a way retrying
cannot fix, it goes to the dead-letter stream (tidings.redelivery: what each carries).
Nothing blocks the partition while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from typing import Any

from tidings import tracing
from tidings.agent import Agent
from tidings.batch import Batch, RetryRequest
from tidings.errors import PayloadError, Reject, Retry
from tidings.lanes import LaneReader
from tidings.message import Message
from tidings.observability.logs import current_trace
from tidings.redelivery import dead_letter_fields, retried_fields, retry_delay
from tidings.retry import RetryPolicy
from tidings.settings import Settings
from tidings.tasks import all_or_none, being_cancelled
from tidings.transport import Entry, Transport, min_id, pack_delayed

log = logging.getLogger("tidings.consumer")

# How often the delay set is checked when nothing in it is known to fall due sooner.
PROMOTE_EVERY_S = 1.0


class PartitionConsumer:
    """Reads one partition of a topic for one agent until told to stop."""

    def __init__(
        self,
        agent: Agent[Any],
        partition: int,
        consumer: str,
        transport: Transport,
        settings: Settings,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.agent = agent
        self.partition = partition
        self.consumer = consumer
        self.transport = transport
        self.settings = settings
        self.policy = policy or agent.retry or RetryPolicy()
        self.keys = agent.topic.keys(partition)
        self.retry_stream = self.keys.retry(agent.group)
        self.delay_set = self.keys.delayed(agent.group)
        # Priority lanes, then this group's retries, read with the low lane's weight: never
        # starved, never crowding out fresh work.
        self.lanes = (*self.keys.lanes, self.retry_stream)
        self.reader = LaneReader(transport, agent.group, consumer, self.lanes,
                                 [*settings.lane_weights, settings.lane_weights[2]],
                                 settings.batch_size)
        self._stopping = asyncio.Event()
        self._next_promote = 0.0
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._batch: list[Entry] = []
        # The batch whose deferred work is running (see Batch.defer), and its entries.
        self._settling: asyncio.Task[None] | None = None
        self._settling_entries: list[Entry] = []
        # Set by the partition's owner whenever the lease is renewed (monotonic seconds).
        self.lease_until = math.inf

    def stop(self) -> None:
        """Stop reading; the batch in hand is finished and acked."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        for lane in self.lanes:
            await self.transport.create_group(lane, self.agent.group)

    async def run(self) -> None:
        backoff = 0.0
        try:
            while not self.stopping:
                if time.monotonic() > self.lease_until:
                    log.warning("lease on %s for %s lapsed: stopping this reader so no two"
                                " processes read it", self.keys.tag, self.agent.group)
                    break
                try:
                    await self._maintain()
                    entries = await self._read()
                    if entries:
                        await self.process(entries, overlap=True)
                    backoff = 0.0
                except Exception as exc:  # Redis away or a bug: keep the partition, retry
                    if being_cancelled():
                        raise asyncio.CancelledError from exc
                    if "NOGROUP" in str(exc):  # stream or group deleted under us: recreate
                        with contextlib.suppress(Exception):
                            await self.start()
                    backoff = min(max(backoff * 2, 0.1), 5.0)
                    log.error("consumer of %s failed (%s: %s); retrying in %.1fs",
                              self.keys.tag, type(exc).__name__, exc, backoff)
                    await asyncio.sleep(backoff)
        finally:
            try:
                await self._end_settling()
            finally:  # even when cancelled while finishing it (the shutdown deadline)
                unfinished = self._unfinished()
                await self.reader.flush_acks()
                if unfinished:
                    # Cancelled at the shutdown deadline: hand these to the next owner now.
                    await asyncio.shield(self.release(unfinished))

    async def _settled(self) -> None:
        """Wait until the deferred batch, if any, is published and acked (or left pending)."""
        task, self._settling = self._settling, None
        if task is not None:
            await task
            self._settling_entries = []  # kept if it failed: still pending, not acked

    async def _end_settling(self) -> None:
        """On the way out: finish the deferred batch, or, when cancelled, abandon it (its
        entries are then handed back with the rest of the unfinished ones)."""
        task = self._settling
        if task is None:
            return
        if being_cancelled() and not task.done():
            self._settling = None
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("could not finish the last batch of %s (%s)", self.keys.tag,
                          task.exception())
            return
        try:
            await self._settled()
        except Exception as exc:  # its entries stay pending: handed back below
            log.error("could not finish the last batch of %s (%s: %s)", self.keys.tag,
                      type(exc).__name__, exc)

    def _unfinished(self) -> dict[str, list[bytes]]:
        done = {(stream, i) for stream, ids in self.reader.acks.items() for i in ids}
        left: dict[str, list[bytes]] = {}
        for entry in [*self._settling_entries, *self._batch]:
            if (entry.stream, entry.id) not in done:
                left.setdefault(entry.stream, []).append(entry.id)
        return left

    async def _read(self) -> list[Entry]:
        reader = self.reader
        # After a blocking read that found nothing, block again at once (nothing to ack or
        # settle): a read that does not block first would cost a round trip per lane for
        # nothing, on every idle stage, every TIDINGS_BLOCK_MS.
        if not reader.idle or reader.acks or self._settling is not None:
            entries = await reader.read_now()
            if entries or self.stopping:
                return entries
            if self._settling is not None:  # settle it; its acks go with the read below
                await self._settled()
                if self.stopping or time.monotonic() > self.lease_until:
                    return entries  # the loop stops, or sees the lease lapsed and stops
        # Wake in time to move the next due retry.
        block_ms = min(self.settings.block_ms,
                       int((self._next_promote - time.monotonic()) * 1000))
        if block_ms < 1:
            return []
        return await reader.wait(block_ms)

    # -- handling -------------------------------------------------------------------------

    async def process(self, entries: list[Entry], *, overlap: bool = False) -> None:
        """Handle a batch: dead-letter what cannot be handled, run the rest, collect acks.
        With ``overlap``, work the handler deferred may still be running on return."""
        self._batch = entries
        await self._handle(entries, overlap)
        self._batch = []

    async def _handle(self, entries: list[Entry], overlap: bool) -> None:
        messages: list[tuple[Entry, Message[Any]]] = []
        rejects: list[tuple[Entry, str, str]] = []
        for entry in entries:  # a plain loop: only the rare rejects need awaiting
            message = self._admit(entry, rejects)
            if message is not None:
                messages.append((entry, message))
        for entry, kind, reason in rejects:
            await self._dead_letter(entry, kind, reason,
                                    "PayloadError" if kind == "invalid" else None)
        if not messages:
            return
        if self.agent.batch:
            await self._run_batch(messages, overlap)
            return
        concurrency = self.agent.concurrency
        if concurrency <= 1 or len(messages) == 1:
            await self._run_in_order(messages)
            return
        slots: list[list[tuple[Entry, Message[Any]]]] = [[] for _ in range(concurrency)]
        for index, item in enumerate(messages):
            key = item[1].key
            slot = index if key is None else zlib.crc32(key.encode())
            slot %= concurrency
            slots[slot].append(item)
        # One slot failing stops the others before this returns: none may run on beside the
        # next batch (a key's later message before its earlier one) or past a stop.
        await all_or_none([self._run_in_order(s) for s in slots if s])

    def _admit(
        self, entry: Entry, rejects: list[tuple[Entry, str, str]]
    ) -> Message[Any] | None:
        """Decode an entry, or note why it goes to the dead-letter stream instead."""
        stats = self.agent.stats
        if entry.fields is None:
            stats.deleted += 1
            self.reader.ack(entry)
            log.warning("entry %s of %s was deleted while pending; acked", entry.id, entry.stream)
            return None
        if entry.deliveries > self.settings.max_deliveries:
            stats.poison += 1
            rejects.append((
                entry, "poison",
                f"delivered {entry.deliveries} times without an ack"
                f" (TIDINGS_MAX_DELIVERIES={self.settings.max_deliveries})",
            ))
            return None
        try:
            return self.agent.topic.decode(entry.fields, entry.id, self.partition, entry.deliveries)
        except PayloadError as exc:
            stats.invalid += 1
            rejects.append((entry, "invalid", str(exc)))
            return None

    async def _run_in_order(self, items: list[tuple[Entry, Message[Any]]]) -> None:
        stats = self.agent.stats
        handler = self.agent.handler
        acks = self.reader.acks
        timing = stats.handler_seconds
        clock = time.perf_counter
        traced = tracing.enabled()
        for entry, message in items:
            # Lines logged while the message is handled (and retried or dead-lettered) name it.
            trace = current_trace.set(message.envelope.trace_id or message.envelope.id)
            started = clock()
            try:
                try:
                    await (self._traced(message) if traced else handler(message))
                finally:
                    timing.observe(clock() - started)
            except Reject as exc:
                stats.rejected += 1
                await self._dead_letter(entry, "rejected", exc.reason, "Reject", message)
            except Retry as exc:
                await self._retry(entry, message, RetryRequest(exc.reason, exc.delay, "Retry"))
            except Exception as exc:  # a handler bug must not kill the consumer
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                stats.failed += 1
                reason = f"{type(exc).__name__}: {exc}"
                if self.policy.retryable(exc):
                    await self._retry(entry, message, RetryRequest(reason, None,
                                                                   type(exc).__name__))
                else:
                    stats.permanent += 1
                    await self._dead_letter(entry, "permanent", reason, type(exc).__name__,
                                            message)
            else:
                stats.processed += 1
                ack_list = acks.get(entry.stream)
                if ack_list is None:
                    acks[entry.stream] = [entry.id]
                else:
                    ack_list.append(entry.id)
            finally:
                current_trace.reset(trace)

    async def _traced(self, message: Message[Any]) -> None:
        """The handler inside an OpenTelemetry span in the message's trace."""
        envelope = message.envelope
        with tracing.span(f"tidings.handle {self.agent.name}", envelope.trace_id or envelope.id, {
            "tidings.message_id": envelope.id, "tidings.topic": self.agent.topic.name,
            "tidings.agent": self.agent.name, "tidings.partition": self.partition,
            "tidings.attempt": envelope.attempt, "tidings.deliveries": message.deliveries,
        }):
            await self.agent.handler(message)

    async def _run_batch(self, items: list[tuple[Entry, Message[Any]]], overlap: bool) -> None:
        batch = Batch([message for _, message in items])
        started = time.perf_counter()
        try:
            with tracing.span(f"tidings.batch {self.agent.name}", None, {
                "tidings.topic": self.agent.topic.name, "tidings.agent": self.agent.name,
                "tidings.partition": self.partition, "tidings.batch_size": len(items),
            }):
                await self.agent.handler(batch)
        except Exception as exc:
            self._batch_failed(items, exc)
            return
        finally:
            self.agent.stats.handler_seconds.observe(time.perf_counter() - started)
        # The previous batch's deferred work ran while this one was handled; it settles first
        # (outputs in batch order), whether or not this one defers anything.
        try:
            await self._settled()
        except Exception as exc:  # that batch stays pending and is redelivered; this one goes on
            if being_cancelled():
                raise asyncio.CancelledError from exc
            log.error("could not finish a batch of %s (%s: %s); it stays pending", self.keys.tag,
                      type(exc).__name__, exc)
        if batch.deferred is None or not overlap:
            await self._settle(items, batch)
            return
        self._settling = asyncio.create_task(self._settle(items, batch))
        self._settling_entries = [entry for entry, _ in items]

    def _batch_failed(self, items: list[tuple[Entry, Message[Any]]], exc: Exception) -> None:
        """The whole batch stays pending and is redelivered."""
        if being_cancelled():
            raise asyncio.CancelledError from exc
        self.agent.stats.failed += len(items)
        log.warning("batch agent %s failed on %d messages: %s: %s; they stay pending and"
                    " are redelivered after TIDINGS_CLAIM_IDLE_MS", self.agent.name,
                    len(items), type(exc).__name__, exc)

    async def _settle(self, items: list[tuple[Entry, Message[Any]]], batch: Batch[Any]) -> None:
        """Run the batch's deferred work, publish its outputs, then ack, retry or dead-letter
        each message by the handler's verdict."""
        stats = self.agent.stats
        try:
            if batch.deferred is not None:
                await batch.deferred()
            if batch.outgoing:  # outputs first: a crash before the acks redelivers the inputs
                await self.transport.add(batch.outgoing)
                for topic in batch.targets:
                    topic.published += 1
        except Exception as exc:
            self._batch_failed(items, exc)
            return
        for entry, message in items:
            outcome = batch.outcome(message)
            if outcome.verdict == "ack":
                stats.processed += 1
                self.reader.ack(entry)
            elif outcome.verdict == "reject":
                kind = outcome.kind
                setattr(stats, kind, getattr(stats, kind) + 1)
                await self._dead_letter(entry, kind, outcome.reason or kind, None, message)
            elif outcome.retry is not None:
                if outcome.retry.count:
                    stats.failed += 1
                await self._retry(entry, message, outcome.retry)

    async def _retry(self, entry: Entry, message: Message[Any], request: RetryRequest) -> None:
        """Park the message in the delay set for its next attempt, or dead-letter it when the
        policy gives up."""
        policy = request.policy or self.policy
        attempt = message.envelope.attempt
        delay = retry_delay(policy, message.envelope, request)
        if delay is None:
            self.agent.stats.exhausted += 1
            await self._dead_letter(
                entry, "exhausted",
                f"{request.reason} (gave up after attempt {attempt}: {policy.describe()})",
                request.error_type, message,
            )
            return
        member = pack_delayed(retried_fields(entry, message.envelope, request, delay))
        delay_ms = max(0, round(delay * 1000))
        # Ack and park in one step; far-off retries move on to PostgreSQL (tidings.parking).
        await self.transport.retry_later(
            entry.stream, self.agent.group, entry.id, self.delay_set, member, delay_ms
        )
        self.agent.stats.retried += 1
        self._next_promote = min(self._next_promote, time.monotonic() + delay_ms / 1000)
        log.info("agent %s retries message %s in %.2fs (attempt %d failed: %s)",
                 self.agent.name, message.id, delay, attempt, request.reason)

    async def _dead_letter(
        self, entry: Entry, kind: str, reason: str, error_type: str | None = None,
        message: Message[Any] | None = None,
    ) -> None:
        fields = dead_letter_fields(entry, self.agent.group, kind, reason, error_type,
                                    None if message is None else message.envelope.attempt)
        await self.transport.dead_letter(
            entry.stream, self.agent.group, entry.id, self.keys.dead, fields
        )
        log.warning("dead-lettered %s from %s (%s): %s", entry.id, entry.stream, kind, reason)

    # -- housekeeping ---------------------------------------------------------------------

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(self.settings.claim_idle_ms / 4000, 0.05)
            # Ack first: a batch slower than claim_idle_ms would otherwise be reclaimed, and
            # run again, by this very consumer.
            await self._settled()
            await self.reader.flush_acks()
            await self.reclaim()
        if now >= self._next_promote:
            await self.promote()
        if now >= self._next_trim:
            self._next_trim = now + self.settings.trim_interval_s
            await self.trim()

    async def promote(self) -> int:
        """Move this group's due retries from its delay set to its retry stream."""
        limit = self.settings.batch_size
        moved, wait_ms = await self.transport.promote(self.delay_set, self.retry_stream, limit)
        wait = PROMOTE_EVERY_S if wait_ms is None else min(wait_ms / 1000, PROMOTE_EVERY_S)
        self._next_promote = time.monotonic() + (0 if moved >= limit else wait)
        if moved:
            self.reader.mark_busy(len(self.lanes) - 1)
        return moved

    async def reclaim(self) -> int:
        """Take over entries left pending too long (a crashed or stuck consumer) and run them.

        One at a time, each acked before the next is claimed: a claim counts a delivery, and
        the entry that crashed its consumer must not make its batch-mates look like poison
        too. Only orphans are pending here (this reader acks before it reclaims), so the
        one-by-one scan is short.
        """
        total = 0
        for lane in self.lanes:
            start = b"0-0"
            while not self.stopping:
                claimed = await self.transport.claim(
                    lane, self.agent.group, self.consumer, self.settings.claim_idle_ms,
                    start, 1,
                )
                if claimed.deleted:
                    self.agent.stats.deleted += len(claimed.deleted)
                    await self.transport.ack(lane, self.agent.group, claimed.deleted)
                if claimed.entries:
                    self.agent.stats.reclaimed += len(claimed.entries)
                    total += len(claimed.entries)
                    await self.process(claimed.entries)
                    await self.reader.flush_acks()
                start = claimed.next_start
                if start in (b"0-0", b"0"):
                    break
        return total

    async def trim(self) -> int:
        """Drop entries every group is done with; never a pending or unread one (D5)."""
        removed = 0
        for lane in self.lanes:
            groups = await self.transport.groups(lane)
            if not groups:
                continue
            floors = [g.last_delivered for g in groups]
            floors += [g.oldest_pending for g in groups if g.oldest_pending is not None]
            floor = min_id(floors)
            if floor not in (b"0-0", b"0"):
                removed += await self.transport.trim_below(lane, floor)
        self.agent.stats.trimmed += removed
        return removed

    async def release(self, ids_by_stream: dict[str, list[bytes]]) -> None:
        for stream, ids in ids_by_stream.items():
            try:  # each stream on its own: one failure must not keep the rest
                await self.transport.release(stream, self.agent.group, self.consumer, ids)
            except Exception as exc:
                log.error("could not hand back %d entries of %s (%s); they are reclaimed after"
                          " TIDINGS_CLAIM_IDLE_MS", len(ids), stream, exc)

