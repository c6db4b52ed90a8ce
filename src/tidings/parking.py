"""Long retry delays (hours, days) wait in PostgreSQL, not in Redis memory.

A failed message always goes to its group's delay set first, in the same atomic step as its
ack. Every worker with a database runs :meth:`Parking.run` over its app's delay sets: members
due later than ``park_after_s`` move to ``parked_retries`` (insert, commit, then ZREM), and
rows nearly due move back (ZADD, then delete). Each move repeats harmlessly after a crash
between its halves: a member is keyed by its delay set and its own hash, and adding a member
that is still there changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.message import MAX_MS, now_ms
from tidings.tasks import being_cancelled
from tidings.transport import Transport

log = logging.getLogger("tidings.parking")

_PARK = text("""
INSERT INTO parked_retries (delay_set, member_hash, member, due_at)
SELECT * FROM unnest(CAST(:delay_set AS text[]), CAST(:member_hash AS text[]),
                     CAST(:member AS bytea[]), CAST(:due_at AS timestamptz[]))
ON CONFLICT (delay_set, member_hash) DO NOTHING
""")

_DUE = text("""
SELECT id, delay_set, member, due_at FROM parked_retries
WHERE due_at <= :horizon ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED
""")

_DELETE = text("DELETE FROM parked_retries WHERE id = ANY(CAST(:ids AS bigint[]))")


def member_hash(member: bytes) -> str:
    return hashlib.blake2b(member, digest_size=16).hexdigest()


class Parking:
    """Moves far-off retries between Redis delay sets and PostgreSQL; see the module doc."""

    def __init__(self, engine: AsyncEngine, *, park_after_s: float = 3600.0,
                 lead_s: float = 60.0, every_s: float = 5.0, batch: int = 500) -> None:
        self.engine = engine
        self.park_after_s = park_after_s
        # Back in Redis this long before due: plenty for every_s polls. Never as long as
        # park_after_s: a retry would be parked and brought back at once, again and again,
        # and one worker's unpark could land between another's park and its ZREM.
        self.lead_s = min(lead_s, park_after_s / 2)
        self.every_s = every_s
        self.batch = batch
        self._stop = asyncio.Event()

    async def park(self, transport: Transport, delay_sets: Sequence[str]) -> int:
        """Move members due later than ``park_after_s`` from these delay sets to PostgreSQL."""
        moved = 0
        after_ms = now_ms() + round(self.park_after_s * 1000)
        for delay_set in delay_sets:
            while True:
                far = await transport.due_after(delay_set, after_ms, self.batch)
                if not far:
                    break
                async with self.engine.begin() as conn:
                    await conn.execute(_PARK, {
                        "delay_set": [delay_set] * len(far),
                        "member_hash": [member_hash(m) for m, _ in far],
                        "member": [m for m, _ in far],
                        # A delay past the year 9999 (a time given as a delay, say) waits
                        # until then, instead of failing every move of this set.
                        "due_at": [datetime.fromtimestamp(min(due, MAX_MS) / 1000, UTC)
                                   for _, due in far],
                    })
                await transport.unschedule(delay_set, [m for m, _ in far])  # after the commit
                moved += len(far)
                if len(far) < self.batch:
                    break
        return moved

    async def unpark(self, transport: Transport) -> int:
        """Move every row due within ``lead_s`` back to its delay set; return how many."""
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

    async def run(self, transport: Transport, delay_sets: Callable[[], Sequence[str]]) -> None:
        """Park and unpark every ``every_s`` until :meth:`stop`; errors are logged, retried."""
        # Each on its own: retries parked already come back even when parking more fails.
        moves: tuple[Callable[[], Awaitable[int]], ...] = (
            lambda: self.park(transport, delay_sets()), lambda: self.unpark(transport))
        while not self._stop.is_set():
            for move in moves:
                try:
                    await move()
                except Exception as exc:  # PostgreSQL or Redis away: nothing moved is lost
                    if being_cancelled():
                        raise asyncio.CancelledError from exc
                    log.error("could not move parked retries (%s: %s); retrying",
                              type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)

    def stop(self) -> None:
        self._stop.set()
