"""Long retry delays (hours, days) wait in PostgreSQL, not in Redis memory.

A consumer parks a retry due later than ``TIDINGS_PARK_AFTER_S`` in ``parked_retries`` and
acks the entry; every worker with a database runs :meth:`Parking.run`, which moves rows that are
nearly due back into their Redis delay set, from where the consumer moves them to its retry
stream on time. Both moves are idempotent, so a crash between their two halves repeats one
half and never loses or doubles a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.tasks import being_cancelled
from tidings.transport import Transport

log = logging.getLogger("tidings.parking")

_PARK = text("""
INSERT INTO parked_retries (stream, entry_id, delay_set, member, due_at)
VALUES (:stream, :entry_id, :delay_set, :member, :due_at)
ON CONFLICT (delay_set, stream, entry_id) DO NOTHING
""")

_DUE = text("""
SELECT id, delay_set, member, due_at FROM parked_retries
WHERE due_at <= :horizon ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED
""")

_DELETE = text("DELETE FROM parked_retries WHERE id = ANY(CAST(:ids AS bigint[]))")


class Parking:
    """Parks far-off retries in PostgreSQL and brings them back to Redis when nearly due."""

    def __init__(self, engine: AsyncEngine, *, lead_s: float = 60.0, every_s: float = 5.0,
                 batch: int = 500) -> None:
        self.engine = engine
        self.lead_s = lead_s  # back in Redis this long before due: plenty for every_s polls
        self.every_s = every_s
        self.batch = batch
        self._stop = asyncio.Event()

    async def park(self, stream: str, entry_id: bytes, delay_set: str, member: bytes,
                   due_ms: int) -> None:
        """Hold ``member`` until ``due_ms`` (Unix ms); the caller acks the entry after this."""
        async with self.engine.begin() as conn:
            await conn.execute(_PARK, {
                "stream": stream, "entry_id": entry_id.decode(), "delay_set": delay_set,
                "member": member, "due_at": datetime.fromtimestamp(due_ms / 1000, UTC),
            })

    async def unpark(self, transport: Transport) -> int:
        """Move every row due within ``lead_s`` to its delay set; return how many moved."""
        moved = 0
        while True:
            horizon = datetime.now(UTC) + timedelta(seconds=self.lead_s)
            async with self.engine.begin() as conn:
                rows = (await conn.execute(_DUE, {"horizon": horizon,
                                                  "limit": self.batch})).all()
                if not rows:
                    return moved
                await transport.schedule([
                    (row.delay_set, bytes(row.member), int(row.due_at.timestamp() * 1000))
                    for row in rows
                ])
                await conn.execute(_DELETE, {"ids": [row.id for row in rows]})
            moved += len(rows)
            if len(rows) < self.batch:
                return moved

    async def run(self, transport: Transport) -> None:
        """Unpark every ``every_s`` until :meth:`stop`; errors are logged and retried."""
        while not self._stop.is_set():
            try:
                await self.unpark(transport)
            except Exception as exc:  # PostgreSQL or Redis away: the rows wait, nothing lost
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                log.error("could not move parked retries back to Redis (%s: %s); retrying",
                          type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)

    def stop(self) -> None:
        self._stop.set()
