"""Redis Streams transport: XADD / XREADGROUP / XACK / XAUTOCLAIM, leases and trimming.

Works on Redis 6.2 and later. On 6.2 XAUTOCLAIM has no deleted-ids element and returns a
deleted pending entry with a nil body; both shapes are handled here (DESIGN.md D3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tidings.errors import PartlyAdded
from tidings.transport import Claimed, Entry, GroupState

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# Member expiry uses the server's clock, so skewed worker clocks cannot evict each other.
_JOIN = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
redis.call('pexpire', KEYS[1], tonumber(ARGV[2]) * 3)
return redis.call('zcard', KEYS[1])
"""

# The marker and the stream share a hash tag (one slot), so this is cluster-safe.
_ADD_ONCE = """
if redis.call('set', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return redis.call('xadd', KEYS[2], '*', unpack(ARGV, 2))
end
return false
"""

# Due times use the server's clock, so workers with skewed clocks agree on when a retry is due.
# Only if this XACK acked the entry: a reader whose lease lapsed must not add a second retry
# (or dead letter) of an entry its new owner already handled.
_RETRY_LATER = """
if redis.call('xack', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
return 1
"""

_DEAD_LETTER = """
if redis.call('xack', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
return redis.call('xadd', KEYS[2], '*', unpack(ARGV, 3))
"""

# The delay set and the retry stream share the partition's hash tag: one slot.
_PROMOTE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('zrangebyscore', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  -- As transport.unpack_delayed: a member with no NUL (not written by tidings) moves on
  -- whole as the header, to be dead-lettered by its reader, rather than fail every promotion.
  local header, payload = member, ''
  local cut = string.find(member, '\\0', 1, true)
  if cut then header, payload = string.sub(member, 1, cut - 1), string.sub(member, cut + 1) end
  redis.call('xadd', KEYS[2], '*', 'e', header, 'd', payload)
  redis.call('zrem', KEYS[1], member)
end
local nxt = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {#due, math.max(0, tonumber(nxt[2]) - now)}
end
return {#due, -1}
"""

_IDLE_FOREVER_MS = 10**12


def _raw(response: Any, **_: Any) -> Any:
    return response


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _entries(replies: list[Any]) -> list[Entry]:
    entries: list[Entry] = []
    for reply in replies:
        if not reply:
            continue
        # [[stream, entries], ...] in RESP2, {stream: entries} in RESP3.
        for stream_name, items in reply.items() if isinstance(reply, dict) else reply:
            stream = stream_name.decode()
            entries.extend(Entry(stream, entry_id, None if flat is None else _pairs(flat))
                           for entry_id, flat in items)
    return entries


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class RedisTransport:
    """The production transport over one ``redis.asyncio.Redis`` client (bytes replies)."""

    def __init__(self, client: Redis, blocking: Redis | None = None) -> None:
        self.client = client
        # Blocking reads get a pool of their own, so idle readers never starve acks, sends
        # and lease renewals of connections.
        self.blocking = blocking or client
        # Turns at the blocking pool, first come first served: redis-py's pool hands a freed
        # connection to whoever asks next, so a reader that blocks again at once would keep
        # it, and with more readers than connections the others would starve.
        pool_size = getattr(self.blocking.connection_pool, "max_connections", None)
        self._blocking_turns = asyncio.Semaphore(pool_size or 2**31)
        # Parse XAUTOCLAIM ourselves: redis-py's parser cannot read Redis 6.2's nil bodies.
        client.set_response_callback("XAUTOCLAIM", _raw)
        # XREADGROUP too: its replies become Entries directly, not dicts in lists first.
        for reader in {client, self.blocking}:
            reader.set_response_callback("XREADGROUP", _raw)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._join = client.register_script(_JOIN)
        self._add_once = client.register_script(_ADD_ONCE)
        self._retry_later = client.register_script(_RETRY_LATER)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._promote = client.register_script(_PROMOTE)

    async def add(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> list[bytes]:
        if len(entries) == 1:
            stream, fields = entries[0]
            return [await self.client.xadd(stream, fields)]  # type: ignore[arg-type,list-item]
        pipe = self.client.pipeline(transaction=False)
        for stream, fields in entries:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        # Every command runs whatever its neighbours' fate: the caller must learn which landed.
        replies = await pipe.execute(raise_on_error=False)
        errors = {i: r for i, r in enumerate(replies) if isinstance(r, Exception)}
        if len(errors) == len(replies):  # none landed: a plain failure
            raise errors[0]
        if errors:
            raise PartlyAdded([None if i in errors else r for i, r in enumerate(replies)],
                              errors)
        return list(replies)

    async def add_once(
        self, entries: Sequence[tuple[str, str, dict[bytes, bytes]]], ttl_ms: int
    ) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for marker, stream, fields in entries:
            args: list[bytes | int] = [ttl_ms]
            for name, value in fields.items():
                args += [name, value]
            await self._add_once(keys=[marker, stream], args=args, client=pipe)
        return [reply or None for reply in await pipe.execute()]

    async def create_group(self, stream: str, group: str) -> None:
        try:
            await self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self,
        group: str,
        consumer: str,
        counts: Sequence[tuple[str, int]],
        acks: Sequence[tuple[str, Sequence[bytes]]] = (),
        block_ms: int | None = None,
    ) -> list[Entry]:
        # A blocking read goes on the blocking client, its acks with it (Redis applies them
        # before it blocks): one round trip either way.
        pipe = (self.client if block_ms is None else self.blocking).pipeline(transaction=False)
        for stream, ids in acks:
            if ids:
                pipe.xack(stream, group, *ids)
        n_acks = len(pipe.command_stack)
        if block_ms is not None:
            streams = [stream for stream, _ in counts]
            count = max(c for _, c in counts)
            async with self._blocking_turns:
                if not n_acks:
                    reply = await self.blocking.execute_command(  # type: ignore[no-untyped-call]
                        "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK",
                        block_ms, "STREAMS", *streams, *[">"] * len(streams),
                    )
                    return _entries([reply])
                pipe.execute_command("XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                                     "BLOCK", block_ms, "STREAMS", *streams,
                                     *[">"] * len(streams))
                return _entries((await pipe.execute())[n_acks:])
        for stream, count in counts:
            pipe.execute_command(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, ">")
        replies = await pipe.execute()
        return _entries(replies[n_acks:])

    async def ack(self, stream: str, group: str, ids: Sequence[bytes]) -> None:
        if ids:
            await self.client.xack(stream, group, *ids)

    async def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, start: bytes, count: int
    ) -> Claimed:
        reply = await self.client.execute_command(  # type: ignore[no-untyped-call]
            "XAUTOCLAIM", stream, group, consumer, min_idle_ms, start, "COUNT", count
        )
        next_start, raw_entries = reply[0], reply[1]
        deleted: list[bytes] = list(reply[2]) if len(reply) > 2 else []
        live: list[tuple[bytes, dict[bytes, bytes]]] = []
        holes = False
        for item in raw_entries:
            if item is None or item[1] is None:  # Redis 6.2: an entry deleted while pending
                holes = True
            else:
                live.append((item[0], _pairs(item[1])))
        if holes and not deleted:
            deleted = await self._deleted_pending(
                stream, group, consumer, start, next_start, {i for i, _ in live}
            )
        deliveries = await self._delivery_counts(stream, group, [i for i, _ in live])
        entries = [Entry(stream, i, f, deliveries[i]) for i, f in live]
        return Claimed(entries, deleted, next_start)

    async def _deleted_pending(
        self, stream: str, group: str, consumer: str, start: bytes, next_start: bytes,
        live: set[bytes],
    ) -> list[bytes]:
        """Redis 6.2 answers a deleted pending entry with a bare nil, without its id: find the
        ids this consumer now holds in the scanned range whose bodies are gone."""
        end = b"+" if next_start in (b"0-0", b"0") else b"(" + next_start
        rows = await self.client.xpending_range(
            stream, group, start, end, 10_000, consumername=consumer
        )
        candidates = [_bytes(r["message_id"]) for r in rows]
        candidates = [i for i in candidates if i not in live]
        if not candidates:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry_id in candidates:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        bodies = await pipe.execute()
        return [i for i, found in zip(candidates, bodies, strict=True) if not found]

    async def _delivery_counts(
        self, stream: str, group: str, ids: list[bytes]
    ) -> dict[bytes, int]:
        """Exact delivery counts, one XPENDING per id (claims are rare; a range could be cut
        short by other consumers' entries in between)."""
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(stream, group, entry_id, entry_id, 1)
        replies = await pipe.execute()
        return {
            entry_id: int(rows[0]["times_delivered"]) if rows else 1
            for entry_id, rows in zip(ids, replies, strict=True)
        }

    async def release(self, stream: str, group: str, consumer: str, ids: Sequence[bytes]) -> None:
        if ids:
            await self.client.xclaim(
                stream, group, consumer, 0, list(ids), idle=_IDLE_FOREVER_MS, justid=True
            )

    async def dead_letter(
        self, stream: str, group: str, entry_id: bytes, dead_stream: str, fields: dict[bytes, bytes]
    ) -> None:
        args: list[bytes | str] = [group, entry_id]
        for name, value in fields.items():
            args += [name, value]
        await self._dead_letter(keys=[stream, dead_stream], args=args)

    async def retry_later(
        self, stream: str, group: str, entry_id: bytes, delayed: str, member: bytes,
        delay_ms: int,
    ) -> None:
        await self._retry_later(keys=[delayed, stream], args=[group, entry_id, delay_ms, member])

    async def due_after(self, delayed: str, after_ms: int, limit: int) -> list[tuple[bytes, int]]:
        reply: list[tuple[bytes, float]] = await self.client.zrangebyscore(  # type: ignore[assignment]
            delayed, f"({after_ms}", "+inf", start=0, num=limit, withscores=True)
        return [(member, int(score)) for member, score in reply]

    async def unschedule(self, delayed: str, members: Sequence[bytes]) -> None:
        if members:
            await self.client.zrem(delayed, *members)

    async def schedule(self, entries: Sequence[tuple[str, bytes, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for delay_set, member, due_ms in entries:
            pipe.zadd(delay_set, {member: due_ms})
        await pipe.execute()

    async def promote(self, delayed: str, stream: str, limit: int) -> tuple[int, int | None]:
        moved, wait_ms = await self._promote(keys=[delayed, stream], args=[limit])
        return int(moved), None if int(wait_ms) < 0 else int(wait_ms)

    async def groups(self, stream: str) -> list[GroupState]:
        try:
            infos = await self.client.xinfo_groups(stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise
        states = []
        for info in infos:
            name = _text(info["name"])
            oldest = None
            if int(info["pending"]):
                summary = await self.client.xpending(stream, name)
                oldest = summary["min"]
            states.append(
                GroupState(name, info["last-delivered-id"], int(info["pending"]), oldest)
            )
        return states

    async def trim_below(self, stream: str, min_id: bytes) -> int:
        return int(await self.client.xtrim(stream, minid=min_id, approximate=False))

    async def length(self, stream: str) -> int:
        return int(await self.client.xlen(stream))

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self.client.set(key, owner, nx=True, px=ttl_ms))

    async def renew_leases(self, keys: Sequence[str], owner: str, ttl_ms: int) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            await self._renew(keys=[key], args=[owner, ttl_ms], client=pipe)
        return [bool(reply) for reply in await pipe.execute()]

    async def release_lease(self, key: str, owner: str) -> None:
        await self._release(keys=[key], args=[owner])

    async def join(self, members_key: str, member: str, ttl_ms: int) -> int:
        return int(await self._join(keys=[members_key], args=[member, ttl_ms]))

    async def leave(self, members_key: str, member: str) -> None:
        await self.client.zrem(members_key, member)

    async def register_topic(self, registry_key: str, topic: str, partitions: int) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(registry_key, topic, partitions)
        pipe.hget(registry_key, topic)
        _, recorded = await pipe.execute()
        return int(recorded)

    async def known_topics(self, registry_key: str) -> dict[str, int]:
        raw = await self.client.hgetall(registry_key)
        return {_text(k): int(v) for k, v in raw.items()}

    async def close(self) -> None:
        # A client built on an explicit pool (as connect_redis builds it) leaves the pool open
        # on a plain aclose(), leaking its sockets.
        await self.client.aclose(close_connection_pool=True)
        if self.blocking is not self.client:
            await self.blocking.aclose(close_connection_pool=True)
