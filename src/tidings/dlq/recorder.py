"""Copies every dead-stream entry into the ``dead_letters`` table, then trims what was copied.

Recorders read through one consumer group, so several worker processes share the work; the
table's unique (dead_stream, dead_entry_id) makes a repeat after a crash harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import keys
from tidings.dlq.letters import row_of
from tidings.keys import PartitionKeys
from tidings.streams import RedisTransport
from tidings.tables.dead_letters import dead_letters
from tidings.tasks import being_cancelled
from tidings.transport import Entry, min_id, parse_id

log = logging.getLogger("tidings.dlq")

GROUP = "tidings.dlq-recorder"
_ROWS_PER_INSERT = 500


class DeadLetterRecorder:
    """Records the dead letters of every registered topic until :meth:`stop`.

    ``keep_s``: recorded entries younger than this stay in the dead stream, so ``tidings
    queues`` still counts recent dead letters; older recorded ones are trimmed.
    """

    def __init__(
        self,
        client: Redis,
        engine: AsyncEngine,
        namespace: str,
        *,
        consumer: str,
        group: str = GROUP,
        batch: int = 100,
        poll_s: float = 1.0,
        claim_idle_ms: int = 60_000,
        keep_s: float = 86_400.0,
        trim_every_s: float = 60.0,
    ) -> None:
        self.transport = RedisTransport(client)
        self.client = client
        self.engine = engine
        self.namespace = namespace
        self.consumer = consumer
        self.group = group
        self.batch = batch
        self.poll_s = poll_s
        self.claim_idle_ms = claim_idle_ms
        self.keep_s = keep_s
        self.trim_every_s = trim_every_s
        self.recorded = 0
        self._streams: dict[str, tuple[str, int]] = {}  # dead stream -> (topic, partition)
        self._stopping = asyncio.Event()
        self._next_claim = 0.0
        self._next_trim = 0.0

    def stop(self) -> None:
        """Make :meth:`run` return after the batch in hand."""
        self._stopping.set()

    async def run(self) -> None:
        """Record, reclaim and trim every ``poll_s`` until stopped; errors are logged, retried."""
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                busy = await self.record_once()
                now = time.monotonic()
                if now >= self._next_trim:
                    self._next_trim = now + self.trim_every_s
                    await self.trim()
                backoff = 0.0
            except Exception as exc:  # Redis or PostgreSQL away: keep going
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                self._streams.clear()  # a stream or group deleted under us is set up again
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.error("dead-letter recorder failed (%s: %s); retrying in %.1fs",
                          type(exc).__name__, exc, backoff)
                busy = 0
            if not busy or backoff:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff or self.poll_s)

    async def record_once(self) -> int:
        """Record what is waiting (and what a dead recorder left pending); return rows written."""
        await self._discover()
        written = 0
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_idle_ms / 4000
            written += await self._reclaim()
        while not self._stopping.is_set():
            counts = [(stream, self.batch) for stream in self._streams]
            entries = await self.transport.read(self.group, self.consumer, counts) if counts else []
            written += await self._record(entries)
            if max(Counter(e.stream for e in entries).values(), default=0) < self.batch:
                break  # every stream is drained
        return written

    async def trim(self) -> int:
        """Drop recorded entries older than ``keep_s``; never one a group has not finished (D5)."""
        seconds, micros = await self.client.time()
        keep_from = f"{int(seconds * 1000 + micros // 1000 - self.keep_s * 1000)}-0".encode()
        removed = 0
        for stream in list(self._streams):
            groups = await self.transport.groups(stream)
            if not groups:
                continue
            # Everything up to a group's last-delivered id was delivered to it; what is still
            # pending is kept by the oldest-pending floor.
            floors = [_successor(g.last_delivered) for g in groups] + [keep_from]
            floors += [g.oldest_pending for g in groups if g.oldest_pending is not None]
            floor = min_id(floors)
            if floor not in (b"0-0", b"0"):
                removed += await self.transport.trim_below(stream, floor)
        return removed

    async def _discover(self) -> None:
        topics = await self.transport.known_topics(keys.topic_registry(self.namespace))
        for topic, partitions in topics.items():
            for partition in range(partitions):
                stream = PartitionKeys(self.namespace, topic, partition).dead
                if stream not in self._streams:
                    # Group at 0: dead letters parked before any recorder ran are recorded too.
                    await self.transport.create_group(stream, self.group)
                    self._streams[stream] = (topic, partition)

    async def _reclaim(self) -> int:
        written = 0
        for stream in self._streams:
            start = b"0-0"
            while not self._stopping.is_set():
                claimed = await self.transport.claim(
                    stream, self.group, self.consumer, self.claim_idle_ms, start, self.batch
                )
                if claimed.deleted:  # trimmed or deleted while pending: nothing to record
                    await self.transport.ack(stream, self.group, claimed.deleted)
                written += await self._record(claimed.entries)
                start = claimed.next_start
                if start in (b"0-0", b"0"):
                    break
        return written

    async def _record(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        now_ms = int(time.time() * 1000)
        rows: list[dict[str, Any]] = []
        for entry in entries:
            if entry.fields is None:
                continue
            topic, partition = self._streams[entry.stream]
            rows.append(row_of(
                entry.fields, topic, partition, entry.stream, entry.id.decode(), now_ms
            ))
        written = 0
        async with self.engine.begin() as conn:
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                query = (
                    insert(dead_letters)
                    .values(rows[start : start + _ROWS_PER_INSERT])
                    .on_conflict_do_nothing(index_elements=["dead_stream", "dead_entry_id"])
                    .returning(dead_letters.c.id)
                )
                written += len((await conn.execute(query)).all())
        # Acked only once committed: a crash in between re-records, which the unique key absorbs.
        by_stream: dict[str, list[bytes]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            await self.transport.ack(stream, self.group, ids)
        self.recorded += written
        if written:
            log.info("recorded %d dead letter(s)", written)
        return written


def _successor(entry_id: bytes) -> bytes:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}".encode()
