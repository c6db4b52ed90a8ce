"""The outbox relay: publish committed fires to their topics in Redis, exactly once.

A relay locks a batch of outbox rows (``SKIP LOCKED``), publishes them, deletes them and
commits. If it dies between publishing and committing, another relay publishes the rows again;
each message's id is fixed by (schedule, tick) and the publish sets a marker key next to the
stream in the same atomic step, so the second publish is dropped while the marker lives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import keys
from tidings.app import App
from tidings.message import Envelope, Priority, encode, now_ms
from tidings.topic import Topic

log = logging.getLogger("tidings.scheduling.relay")

# A row stays in the outbox only until some relay runs again, so a day covers any outage of
# the relays short of one long enough to need a human anyway.
MARKER_TTL_MS = 24 * 3600 * 1000

Checkpoint = Callable[[str], Awaitable[None]]

_TAKE = text("""
SELECT id, message_id, topic, key, priority, payload::text AS payload, headers, created_ms
FROM outbox ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
""")
_DELETE = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")


def marker_key(topic: Topic[Any], partition: int, message_id: str) -> str:
    """The dedupe marker of one message: in its partition's hash tag, beside its stream."""
    return topic.keys(partition).sent(message_id)


class Relay:
    """Moves outbox rows to Redis through ``app``'s transport, one batch per transaction."""

    def __init__(
        self, app: App, engine: AsyncEngine, *, batch: int = 500,
        marker_ttl_ms: int = MARKER_TTL_MS, checkpoint: Checkpoint | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.batch = batch
        self.marker_ttl_ms = marker_ttl_ms
        self.checkpoint = checkpoint
        self.published = 0
        self.duplicates = 0

    async def _topic(self, name: str) -> Topic[Any]:
        topic = self.app.topics.get(name)
        if topic is None:
            # The registry fixes a topic's partition count for good; a topic nobody declared
            # yet gets the default, exactly as the first App declaring it would.
            registry = keys.topic_registry(self.app.namespace)
            count = await self.app.transport.register_topic(
                registry, name, self.app.settings.partitions
            )
            # Another relay on the same App may have declared it while this one waited.
            topic = self.app.topics.get(name) or self.app.topic(name, partitions=count)
        return topic

    async def drain(self) -> int:
        """Relay until the outbox holds nothing this relay can lock; return how many went."""
        total = 0
        while True:
            moved = await self.relay_batch()
            total += moved
            if moved < self.batch:
                return total

    async def relay_batch(self) -> int:
        async with self.engine.begin() as conn:
            rows = (await conn.execute(_TAKE, {"limit": self.batch})).all()
            if not rows:
                return 0
            entries = []
            enqueued = now_ms()
            for row in rows:
                topic = await self._topic(row.topic)
                # Key-less messages also go to a fixed partition, so a retry meets its marker.
                partition = topic.partition_for(row.message_id if row.key is None else row.key)
                envelope = Envelope(
                    id=row.message_id, key=row.key, priority=Priority(row.priority),
                    created_ms=row.created_ms, enqueued_ms=enqueued,
                    headers={str(k): str(v) for k, v in row.headers.items()},
                )
                stream = topic.lane_stream(partition, envelope.priority)
                fields = encode(envelope, row.payload.encode())
                entries.append((marker_key(topic, partition, row.message_id), stream, fields))
            ids = await self.app.transport.add_once(entries, self.marker_ttl_ms)
            if self.checkpoint is not None:
                await self.checkpoint("relay")
            await conn.execute(_DELETE, {"ids": [row.id for row in rows]})
        dropped = sum(1 for i in ids if i is None)
        if dropped:
            log.info("relay: %d message(s) were already published, not sent again", dropped)
        self.published += len(ids) - dropped
        self.duplicates += dropped
        return len(rows)
