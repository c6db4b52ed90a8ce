"""In-memory test harness: the Redis Streams semantics tidings relies on, without a server.

`MemoryTransport` keeps streams, consumer groups, pending lists, leases and member sets in
dicts, so agent logic can be unit-tested fast. The same behaviour suite runs against Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from tidings.agent import AgentStats
from tidings.app import App
from tidings.ownership import PartitionOwner
from tidings.settings import Settings
from tidings.transport import Claimed, Entry, GroupState, parse_id, unpack_delayed


def _format(ident: tuple[int, int]) -> bytes:
    return f"{ident[0]}-{ident[1]}".encode()


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    count: int


@dataclass
class _Group:
    last_delivered: tuple[int, int] = (0, 0)
    pending: dict[tuple[int, int], _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: dict[tuple[int, int], dict[bytes, bytes]] = field(default_factory=dict)
    last_id: tuple[int, int] = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryTransport:
    """A single-process stand-in for Redis with the same observable stream semantics."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.members: dict[str, dict[str, float]] = {}
        self.registry: dict[str, dict[str, int]] = {}
        self.markers: dict[str, float] = {}
        self.delayed: dict[str, dict[bytes, float]] = {}  # delay set -> member -> due (ms)
        self._changed = asyncio.Condition()

    @staticmethod
    def _now_ms() -> float:
        return time.monotonic() * 1000

    def _stream(self, name: str) -> _Stream:
        return self.streams.setdefault(name, _Stream())

    def _next_id(self, stream: _Stream) -> tuple[int, int]:
        ms = int(time.time() * 1000)
        last_ms, last_seq = stream.last_id
        stream.last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return stream.last_id

    async def add(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> list[bytes]:
        ids = []
        for name, fields in entries:
            stream = self._stream(name)
            ident = self._next_id(stream)
            stream.entries[ident] = dict(fields)
            ids.append(_format(ident))
        async with self._changed:
            self._changed.notify_all()
        return ids

    async def add_once(
        self, entries: Sequence[tuple[str, str, dict[bytes, bytes]]], ttl_ms: int
    ) -> list[bytes | None]:
        ids: list[bytes | None] = []
        for marker, stream, fields in entries:
            now = self._now_ms()
            if self.markers.get(marker, 0) > now:
                ids.append(None)
                continue
            self.markers[marker] = now + ttl_ms
            ids.extend(await self.add([(stream, fields)]))
        return ids

    async def create_group(self, stream: str, group: str) -> None:
        self._stream(stream).groups.setdefault(group, _Group())

    def _group(self, stream: str, group: str) -> _Group:
        try:
            return self.streams[stream].groups[group]
        except KeyError:
            raise LookupError(f"NOGROUP no group {group!r} on {stream!r}") from None

    def _read_new(self, name: str, group: str, consumer: str, count: int) -> list[Entry]:
        stream = self.streams.get(name)
        if stream is None:
            raise LookupError(f"NOGROUP no stream {name!r}")
        state = self._group(name, group)
        out = []
        for ident in sorted(i for i in stream.entries if i > state.last_delivered)[:count]:
            state.last_delivered = ident
            state.pending[ident] = _Pending(consumer, self._now_ms(), 1)
            out.append(Entry(name, _format(ident), stream.entries[ident], 1))
        return out

    async def read(
        self,
        group: str,
        consumer: str,
        counts: Sequence[tuple[str, int]],
        acks: Sequence[tuple[str, Sequence[bytes]]] = (),
        block_ms: int | None = None,
    ) -> list[Entry]:
        for stream, ids in acks:
            await self.ack(stream, group, ids)
        deadline = None if block_ms is None else time.monotonic() + block_ms / 1000
        while True:
            entries = [e for s, c in counts for e in self._read_new(s, group, consumer, c)]
            if entries or deadline is None:
                return entries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return []

    async def ack(self, stream: str, group: str, ids: Sequence[bytes]) -> None:
        state = self._group(stream, group)
        for raw in ids:
            state.pending.pop(parse_id(raw), None)

    async def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, start: bytes, count: int
    ) -> Claimed:
        state = self._group(stream, group)
        entries_of = self.streams[stream].entries
        now = self._now_ms()
        begin = parse_id(start)
        candidates = sorted(i for i in state.pending if i >= begin)
        entries: list[Entry] = []
        deleted: list[bytes] = []
        scanned = 0
        for ident in candidates:
            if len(entries) + len(deleted) >= count:
                return Claimed(entries, deleted, _format(ident))
            scanned += 1
            info = state.pending[ident]
            if now - info.delivered_at < min_idle_ms:
                continue
            if ident not in entries_of:
                del state.pending[ident]
                deleted.append(_format(ident))
                continue
            info.consumer, info.delivered_at, info.count = consumer, now, info.count + 1
            entries.append(Entry(stream, _format(ident), entries_of[ident], info.count))
        return Claimed(entries, deleted, b"0-0")

    async def release(self, stream: str, group: str, consumer: str, ids: Sequence[bytes]) -> None:
        state = self._group(stream, group)
        for raw in ids:
            info = state.pending.get(parse_id(raw))
            if info is not None:
                info.consumer, info.delivered_at = consumer, -1e15

    async def dead_letter(
        self, stream: str, group: str, entry_id: bytes, dead_stream: str, fields: dict[bytes, bytes]
    ) -> None:
        if await self._acked(stream, group, entry_id):
            await self.add([(dead_stream, fields)])

    async def _acked(self, stream: str, group: str, entry_id: bytes) -> bool:
        """XACK's answer: whether the entry was pending for the group (and is acked now)."""
        return self._group(stream, group).pending.pop(parse_id(entry_id), None) is not None

    async def retry_later(
        self, stream: str, group: str, entry_id: bytes, delayed: str, member: bytes,
        delay_ms: int,
    ) -> None:
        if await self._acked(stream, group, entry_id):
            self.delayed.setdefault(delayed, {})[member] = self._now_ms() + delay_ms

    async def due_after(self, delayed: str, after_ms: int, limit: int) -> list[tuple[bytes, int]]:
        offset = time.time() * 1000 - self._now_ms()  # ours monotonic; callers' Unix ms
        due = sorted((at + offset, m) for m, at in self.delayed.get(delayed, {}).items())
        return [(m, int(at)) for at, m in due if at > after_ms][:limit]

    async def unschedule(self, delayed: str, members: Sequence[bytes]) -> None:
        for member in members:
            self.delayed.get(delayed, {}).pop(member, None)

    async def schedule(self, entries: Sequence[tuple[str, bytes, int]]) -> None:
        offset = self._now_ms() - time.time() * 1000  # due times are Unix ms; ours monotonic
        for delay_set, member, due_ms in entries:
            self.delayed.setdefault(delay_set, {})[member] = due_ms + offset

    async def promote(self, delayed: str, stream: str, limit: int) -> tuple[int, int | None]:
        members = self.delayed.get(delayed, {})
        now = self._now_ms()
        due = sorted((at, m) for m, at in members.items() if at <= now)[:limit]
        if due:
            await self.add([(stream, unpack_delayed(m)) for _, m in due])
        for _, member in due:
            del members[member]
        if not members:
            return len(due), None
        return len(due), max(0, int(min(members.values()) - now))

    async def groups(self, stream: str) -> list[GroupState]:
        state = self.streams.get(stream)
        if state is None:
            return []
        return [
            GroupState(
                name, _format(g.last_delivered), len(g.pending),
                _format(min(g.pending)) if g.pending else None,
            )
            for name, g in state.groups.items()
        ]

    async def trim_below(self, stream: str, min_id: bytes) -> int:
        state = self.streams.get(stream)
        if state is None:
            return 0
        floor = parse_id(min_id)
        doomed = [i for i in state.entries if i < floor]
        for ident in doomed:
            del state.entries[ident]
        return len(doomed)

    async def length(self, stream: str) -> int:
        state = self.streams.get(stream)
        return 0 if state is None else len(state.entries)

    def _lease_holder(self, key: str) -> str | None:
        held = self.leases.get(key)
        if held is None or held[1] <= self._now_ms():
            return None
        return held[0]

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        if self._lease_holder(key) is not None:
            return False
        self.leases[key] = (owner, self._now_ms() + ttl_ms)
        return True

    async def renew_leases(self, keys: Sequence[str], owner: str, ttl_ms: int) -> list[bool]:
        renewed = []
        for key in keys:
            held = self._lease_holder(key) == owner
            if held:
                self.leases[key] = (owner, self._now_ms() + ttl_ms)
            renewed.append(held)
        return renewed

    async def release_lease(self, key: str, owner: str) -> None:
        if self._lease_holder(key) == owner:
            del self.leases[key]

    async def join(self, members_key: str, member: str, ttl_ms: int) -> int:
        now = self._now_ms()
        live = {m: exp for m, exp in self.members.get(members_key, {}).items() if exp > now}
        live[member] = now + ttl_ms
        self.members[members_key] = live
        return len(live)

    async def leave(self, members_key: str, member: str) -> None:
        self.members.get(members_key, {}).pop(member, None)

    async def register_topic(self, registry_key: str, topic: str, partitions: int) -> int:
        return self.registry.setdefault(registry_key, {}).setdefault(topic, partitions)

    async def known_topics(self, registry_key: str) -> dict[str, int]:
        return dict(self.registry.get(registry_key, {}))

    async def close(self) -> None:
        return None


class Harness:
    """A started App with its agents consuming in this process, for tests."""

    def __init__(self, app: App, consumer: str) -> None:
        self.app = app
        self.owners = [
            PartitionOwner(agent, consumer, app.transport, app.settings)
            for agent in app.agents.values()
        ]

    async def _start(self) -> None:
        for owner in self.owners:
            await owner.start()

    async def stop(self) -> None:
        for owner in self.owners:
            await owner.stop()

    async def drain(self, within: float = 10.0) -> None:
        """Wait until every lane of every agent's topic has been read and acked and no retry
        is waiting. A look is not atomic and a retried message moves back and forth between
        the retry stream and the delay set, so two quiet looks with no handler outcome in
        between are required."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            before = self._outcomes()
            if await self._idle() and await self._idle() and self._outcomes() == before:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"agents still busy after {within}s")

    def _outcomes(self) -> list[AgentStats]:
        return [dataclasses.replace(owner.agent.stats) for owner in self.owners]

    async def _idle(self) -> bool:
        transport = self.app.transport
        for owner in self.owners:
            group = owner.agent.group
            topic = owner.agent.topic
            for partition in range(topic.partitions):
                pk = topic.keys(partition)
                # In the order a retried message moves (lane, delay set, retry stream), so a
                # message moving on while we look is seen in its next place, never missed.
                for lane in pk.lanes:
                    if await _busy(transport, lane, group):
                        return False
                if await _delayed(transport, pk.delayed(group)):
                    return False
                if await _busy(transport, pk.retry(group), group):
                    return False
        return True


async def _busy(transport: Any, lane: str, group: str) -> bool:
    """Entries of ``lane`` that ``group`` has pending or not read yet."""
    for state in await transport.groups(lane):
        if state.name == group:
            return bool(state.pending) or await _unread(transport, lane, state.last_delivered)
    return False


async def _delayed(transport: Any, delay_set: str) -> int:
    """Retries waiting in a delay set."""
    if isinstance(transport, MemoryTransport):
        return len(transport.delayed.get(delay_set, {}))
    return int(await transport.client.zcard(delay_set))


async def _unread(transport: Any, lane: str, last_delivered: bytes) -> bool:
    if isinstance(transport, MemoryTransport):
        stream = transport.streams.get(lane)
        floor = parse_id(last_delivered)
        return stream is not None and any(i > floor for i in stream.entries)
    reply = await transport.client.xrange(lane, min=b"(" + last_delivered, count=1)
    return bool(reply)


@asynccontextmanager
async def running(
    app: App,
    settings: Settings | None = None,
    *,
    transport: Any = None,
    consumer: str = "test-consumer",
    database: bool = False,
) -> AsyncIterator[Harness]:
    """Start ``app`` (on a MemoryTransport unless told otherwise) with its agents consuming.

    With ``database`` it also opens PostgreSQL and applies the migrations, as a worker does.
    """
    settings = settings or Settings(namespace="test", block_ms=50, claim_idle_ms=500)
    if database:
        from tidings import migrate
        from tidings.connections import open_database

        engine = await open_database(settings)
        try:
            await migrate.upgrade(engine, settings.database_schema)
        finally:
            await engine.dispose()
    await app.start(settings, transport=transport or MemoryTransport(), database=database)
    harness = Harness(app, consumer)
    try:
        await harness._start()
        yield harness
    finally:
        await harness.stop()
        await app.stop()
