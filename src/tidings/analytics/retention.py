"""Retention: delete ledger rows and roll-ups older than their configured age, in small
batches (one short transaction each) so that no lock is held for long.

A message, its deliveries and its delivery events go together, by the message's acceptance
time: a notification's story is kept whole or not at all, and kept while it goes on (a leg
still delayed, or one updated since the cutoff). A roll-up row goes once its whole
bucket (minute, hour or day) is older than the cutoff.

The ids of ledger flushes (``ledger_flushes``) matter only while their writer may write the
same flush again, seconds at most; a running writer deletes its own. The last id of a writer
that stopped without that stays behind: ids older than a day are deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.errors import ConfigurationError

_PREFIX = "TIDINGS_RETENTION_"
# A message whose story goes on is kept whole: one with a leg waiting for a later time (its
# send_at or the end of quiet hours may lie past the cutoff) or a leg touched since the cutoff.
_DOOMED = text("""
SELECT m.id FROM messages AS m
WHERE m.created_at < :cutoff
  AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id
                  AND (d.state = 'delayed' OR d.updated_at >= :cutoff))
ORDER BY m.created_at LIMIT :limit FOR UPDATE OF m SKIP LOCKED
""")
# Long past any rewrite of the flush: its writer retries for seconds, then gives up or dies.
FLUSH_IDS_KEPT: Final = timedelta(days=1)
_FLUSH_IDS = text("DELETE FROM ledger_flushes WHERE written_at < :cutoff")
_LEDGER = (
    ("events", text("DELETE FROM delivery_events WHERE message_id = ANY(:ids)")),
    ("deliveries", text("DELETE FROM deliveries WHERE message_id = ANY(:ids)")),
    ("messages", text("DELETE FROM messages WHERE id = ANY(:ids)")),
)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of row is kept, in days (0: forever), and the rows per batch.

    Read by the CLI from ``TIDINGS_RETENTION_LEDGER_DAYS``, ``…_MINUTE_DAYS``,
    ``…_HOUR_DAYS``, ``…_DAY_DAYS`` and ``…_BATCH``.
    """

    ledger_days: float = 30
    minute_days: float = 7
    hour_days: float = 90
    day_days: float = 0
    batch: int = 5_000

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < (1 if f.name == "batch" else 0):
                raise ConfigurationError(
                    f"{_PREFIX}{f.name.upper()} must be "
                    f"{'1 or more' if f.name == 'batch' else '0 (keep forever) or more'}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Retention:
        """The retention the environment sets, defaults for what it does not."""
        environ = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = environ.get(f"{_PREFIX}{f.name.upper()}")
            if raw is None:
                continue
            try:
                values[f.name] = int(raw) if f.name == "batch" else float(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{_PREFIX}{f.name.upper()}={raw!r} is not a number"
                ) from None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Removed:
    """Rows one retention pass deleted, by kind."""

    messages: int = 0
    deliveries: int = 0
    events: int = 0
    minute: int = 0
    hour: int = 0
    day: int = 0
    flushes: int = 0

    @property
    def total(self) -> int:
        """Every row deleted."""
        return sum(getattr(self, f.name) for f in fields(self))


def _cutoff(now: datetime, days: float) -> datetime | None:
    return None if days == 0 else now - timedelta(days=days)


async def _ledger_batch(conn: AsyncConnection, cutoff: datetime, limit: int) -> dict[str, int]:
    ids = list((await conn.execute(_DOOMED, {"cutoff": cutoff, "limit": limit})).scalars())
    if not ids:
        return {}
    return {name: (await conn.execute(sql, {"ids": ids})).rowcount for name, sql in _LEDGER}


async def _stats_batch(conn: AsyncConnection, level: str, cutoff: datetime,
                       limit: int) -> dict[str, int]:
    done = await conn.execute(text(f"""
        DELETE FROM delivery_stats_{level} WHERE ctid IN (
            SELECT ctid FROM delivery_stats_{level}
            WHERE bucket < date_trunc('{level}', CAST(:cutoff AS timestamptz), 'UTC')
            LIMIT :limit)
    """), {"cutoff": cutoff, "limit": limit})
    return {level: done.rowcount}


async def apply_retention(engine: AsyncEngine, retention: Retention, now: datetime) -> Removed:
    """Delete what is older than each retention before ``now``, batch after batch, and the
    flush ids left by writers that are gone."""
    async with engine.begin() as conn:
        flushes = await conn.execute(_FLUSH_IDS, {"cutoff": now - FLUSH_IDS_KEPT})
    counts: dict[str, int] = {"flushes": flushes.rowcount}
    cutoffs = {"ledger": _cutoff(now, retention.ledger_days)}
    for level in ("minute", "hour", "day"):
        cutoffs[level] = _cutoff(now, getattr(retention, f"{level}_days"))
    for kind, cutoff in cutoffs.items():
        if cutoff is None:
            continue
        while True:
            async with engine.begin() as conn:
                if kind == "ledger":
                    done = await _ledger_batch(conn, cutoff, retention.batch)
                else:
                    done = await _stats_batch(conn, kind, cutoff, retention.batch)
            for name, n in done.items():
                counts[name] = counts.get(name, 0) + n
            # The batch that selects the rows: fewer than asked means nothing is left.
            if done.get("messages" if kind == "ledger" else kind, 0) < retention.batch:
                break
    return Removed(**counts)
