"""The seam between the runtime and the stream store: Redis in production, memory in tests.

Everything above this interface (topics, agents, workers) is the same code for both, so one
behaviour suite runs against either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tidings.message import HEADER_FIELD, PAYLOAD_FIELD


@dataclass(slots=True)  # not frozen: built per message, and frozen init is 3x slower
class Entry:
    """One stream entry as read by a consumer."""

    stream: str
    id: bytes
    fields: dict[bytes, bytes] | None  # None: the entry was deleted while pending
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Claimed:
    """Result of reclaiming idle pending entries."""

    entries: list[Entry]
    deleted: list[bytes]
    next_start: bytes


@dataclass(frozen=True, slots=True)
class GroupState:
    """What trimming and monitoring need to know about one consumer group on one stream."""

    name: str
    last_delivered: bytes
    pending: int
    oldest_pending: bytes | None


class Transport(Protocol):
    """Stream operations tidings needs; implemented by RedisTransport and MemoryTransport."""

    async def add(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> list[bytes]:
        """Append entries (stream, fields) in order, in one round trip; return their ids.

        If Redis refuses some of them, the others still land: PartlyAdded says which."""
        ...

    async def add_once(
        self, entries: Sequence[tuple[str, str, dict[bytes, bytes]]], ttl_ms: int
    ) -> list[bytes | None]:
        """Append entries (marker, stream, fields) whose marker key is not set, setting it.

        Marker and append are one atomic step, so a retried publish of the same message is
        dropped while its marker lives (``ttl_ms``); a marker shares its stream's hash tag.
        Returns each new entry's id, or None for a duplicate.
        """
        ...

    async def create_group(self, stream: str, group: str) -> None:
        """Create the group at the start of the stream (creating the stream); idempotent."""
        ...

    async def read(
        self,
        group: str,
        consumer: str,
        counts: Sequence[tuple[str, int]],
        acks: Sequence[tuple[str, Sequence[bytes]]] = (),
        block_ms: int | None = None,
    ) -> list[Entry]:
        """Ack finished entries, then read new ones from each stream up to its count.

        With ``block_ms`` the read is one blocking call over all streams, which must share a
        hash slot; without, it is one pipelined non-blocking read per stream.
        """
        ...

    async def ack(self, stream: str, group: str, ids: Sequence[bytes]) -> None: ...

    async def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, start: bytes, count: int
    ) -> Claimed:
        """Take over entries pending longer than ``min_idle_ms``, with their delivery counts."""
        ...

    async def release(self, stream: str, group: str, consumer: str, ids: Sequence[bytes]) -> None:
        """Leave entries pending but make them reclaimable at once (used at shutdown)."""
        ...

    async def dead_letter(
        self, stream: str, group: str, entry_id: bytes, dead_stream: str, fields: dict[bytes, bytes]
    ) -> None:
        """Atomically ack the original and append to the dead-letter stream; nothing if the
        entry was no longer pending for ``group`` (another consumer dealt with it)."""
        ...

    async def retry_later(
        self, stream: str, group: str, entry_id: bytes, delayed: str, member: bytes,
        delay_ms: int,
    ) -> None:
        """Atomically ack the original entry and park ``member`` (see :func:`pack_delayed`) in
        the delay set ``delayed``, due ``delay_ms`` from now by the server's clock; nothing if
        the entry was no longer pending for ``group``."""
        ...

    async def due_after(self, delayed: str, after_ms: int, limit: int) -> list[tuple[bytes, int]]:
        """Members of ``delayed`` due after Unix ms ``after_ms``, with their due times."""
        ...

    async def unschedule(self, delayed: str, members: Sequence[bytes]) -> None:
        """Remove members from a delay set (they were moved elsewhere)."""
        ...

    async def schedule(self, entries: Sequence[tuple[str, bytes, int]]) -> None:
        """Put members in delay sets, due at absolute Unix ms: (delay set, member, due_ms)."""
        ...

    async def promote(self, delayed: str, stream: str, limit: int) -> tuple[int, int | None]:
        """Move up to ``limit`` due members of ``delayed`` to ``stream``, atomically.

        Returns how many moved and the milliseconds until the next one is due (None: empty).
        """
        ...

    async def groups(self, stream: str) -> list[GroupState]: ...

    async def trim_below(self, stream: str, min_id: bytes) -> int:
        """Delete entries with ids below ``min_id``; return how many went."""
        ...

    async def length(self, stream: str) -> int: ...

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool: ...

    async def renew_leases(self, keys: Sequence[str], owner: str, ttl_ms: int) -> list[bool]:
        """Extend each lease ``owner`` still holds, in one round trip; False where it lost it."""
        ...

    async def release_lease(self, key: str, owner: str) -> None: ...

    async def join(self, members_key: str, member: str, ttl_ms: int) -> int:
        """Refresh this member's expiry, drop expired members, return how many are alive."""
        ...

    async def leave(self, members_key: str, member: str) -> None: ...

    async def register_topic(self, registry_key: str, topic: str, partitions: int) -> int:
        """Record a topic's partition count; return the count already recorded, if any."""
        ...

    async def known_topics(self, registry_key: str) -> dict[str, int]:
        """Every registered topic with its partition count."""
        ...

    async def close(self) -> None: ...


def pack_delayed(fields: dict[bytes, bytes]) -> bytes:
    """A delay-set member: the envelope header, NUL, the payload.

    JSON never holds a raw NUL (it escapes control characters), so the split is unambiguous,
    and the header's id and attempt number make every member unique.
    """
    return fields[HEADER_FIELD] + b"\x00" + fields[PAYLOAD_FIELD]


def unpack_delayed(member: bytes) -> dict[bytes, bytes]:
    header, _, payload = member.partition(b"\x00")
    return {HEADER_FIELD: header, PAYLOAD_FIELD: payload}


def parse_id(raw: bytes) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence) pairs, not as strings."""
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or b"0")


def min_id(ids: Sequence[bytes]) -> bytes:
    return min(ids, key=parse_id)
