"""One scheduler tick: claim the due schedules, record their fires and outbox rows, advance them.

All of it is one transaction. Due rows are claimed with ``FOR UPDATE SKIP LOCKED``, so any
number of schedulers share the work without waiting on each other; a fire row is unique per
(schedule, tick), and the outbox row travels with it, so a scheduler killed mid-tick leaves
nothing behind and a committed tick is published by the relay. "Due" is judged by the
database's clock, so a scheduler with a skewed clock neither fires early nor late.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.scheduling.calendar import Timing
from tidings.scheduling.store import timing_of

log = logging.getLogger("tidings.scheduling")

# Ticks fired per schedule per tick under fire_all: a long outage catches up over several ticks
# instead of in one huge transaction.
CATCH_UP_LIMIT = 100

_CLAIM = text("""
SELECT id, kind, expression, timezone, start_at, end_at, max_runs, runs, misfire,
       next_fire_at, coalesce(CAST(:as_of AS timestamptz), now()) AS now
FROM schedules
WHERE state = 'active' AND next_fire_at <= coalesce(CAST(:as_of AS timestamptz), now())
ORDER BY next_fire_at
LIMIT :limit
FOR UPDATE SKIP LOCKED
""")

_FIRE = text("""
WITH planned AS (
    SELECT * FROM unnest(CAST(:fire_ids AS bigint[]), CAST(:ticks AS timestamptz[]),
                         CAST(:message_ids AS text[])) AS p(schedule_id, tick, message_id)
), fired AS (
    INSERT INTO schedule_fires (schedule_id, tick, message_id, fired_at, lateness_ms, scheduler)
    SELECT schedule_id, tick, message_id, CAST(:now AS timestamptz),
           extract(epoch FROM (CAST(:now AS timestamptz) - tick)) * 1000, :scheduler
    FROM planned
    ON CONFLICT DO NOTHING
    RETURNING schedule_id, tick, message_id
), queued AS (
    INSERT INTO outbox (message_id, topic, key, priority, payload, headers, created_ms)
    SELECT f.message_id, s.topic, s.key, s.priority, s.payload,
           jsonb_build_object('schedule', s.name, 'tick', f.tick),
           CAST(floor(extract(epoch FROM f.tick) * 1000) AS bigint)
    FROM fired f JOIN schedules s ON s.id = f.schedule_id
    RETURNING 1
), advanced AS (
    -- runs counts the fires written: a tick fired before (its row there already) is not one.
    UPDATE schedules s
    SET next_fire_at = u.next_fire_at, state = u.state, updated_at = now(),
        runs = s.runs + (SELECT count(*) FROM fired AS f WHERE f.schedule_id = s.id),
        last_fire_at = coalesce(u.last_fire_at, s.last_fire_at)
    FROM unnest(CAST(:ids AS bigint[]), CAST(:nexts AS timestamptz[]), CAST(:states AS text[]),
                CAST(:lasts AS timestamptz[]))
         AS u(id, next_fire_at, state, last_fire_at)
    WHERE s.id = u.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM advanced) AS advanced
""")


def message_id(schedule_id: int, tick: datetime) -> str:
    """The envelope id of (schedule, tick): the same on every retry, time-ordered like new_id."""
    digest = hashlib.blake2b(f"{schedule_id}@{tick.isoformat()}".encode(), digest_size=10)
    return f"{int(tick.timestamp() * 1000):012x}{digest.hexdigest()}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one tick does with one due schedule."""

    ticks: list[datetime]
    next_fire_at: datetime | None
    skipped: int = 0
    broken: bool = False

    @property
    def state(self) -> str:
        if self.broken:
            return "paused"
        return "active" if self.next_fire_at is not None else "done"


def plan(
    timing: Timing, due: datetime, now: datetime, *, misfire: str, grace: timedelta,
    runs_left: int | None = None, limit: int = CATCH_UP_LIMIT,
) -> Plan:
    """Which ticks of a schedule due at ``due`` fire at ``now``, and when it is due next.

    A tick later than ``grace`` counts as missed and is handled by the ``misfire`` policy.
    """
    if runs_left is not None and runs_left <= 0:
        return Plan([], None)
    if misfire == "fire_all":
        ticks = [due]
        following = timing.next_after(due, anchor=due)
        cap = limit if runs_left is None else min(limit, runs_left)
        while following is not None and following <= now and len(ticks) < cap:
            ticks.append(following)
            following = timing.next_after(following, anchor=due)
        return _bounded(ticks, following, runs_left)
    following = timing.next_after(max(due, now), anchor=due)
    if misfire == "skip" and now - due > grace:
        return Plan([], following, skipped=1)
    return _bounded([due], following, runs_left)


def _bounded(ticks: list[datetime], following: datetime | None, runs_left: int | None) -> Plan:
    if runs_left is not None and len(ticks) >= runs_left:
        return Plan(ticks[:runs_left], None)
    return Plan(ticks, following)


@dataclass(slots=True)
class TickResult:
    """What one tick did, by the database's clock."""

    now: datetime | None = None
    claimed: int = 0
    fired: int = 0
    skipped: int = 0
    lateness_ms: list[float] = field(default_factory=list)


async def tick(
    conn: AsyncConnection, *, scheduler: str, limit: int, grace: timedelta,
    as_of: datetime | None = None,
) -> TickResult:
    """Fire what is due on ``conn``'s open transaction; the caller commits.

    ``as_of`` replaces the database's ``now()``: tests and benchmarks use it to be exact.
    """
    rows = (await conn.execute(_CLAIM, {"as_of": as_of, "limit": limit})).all()
    result = TickResult(claimed=len(rows))
    if not rows:
        return result
    now: datetime = rows[0].now
    result.now = now
    fire_ids, ticks, message_ids = [], [], []
    ids, nexts, states, lasts = [], [], [], []
    for row in rows:
        p = _plan_row(row, now, grace)
        for t in p.ticks:
            fire_ids.append(row.id)
            ticks.append(t)
            message_ids.append(message_id(row.id, t))
            result.lateness_ms.append((now - t).total_seconds() * 1000)
        result.skipped += p.skipped
        ids.append(row.id)
        nexts.append(p.next_fire_at)
        states.append(p.state)
        lasts.append(p.ticks[-1] if p.ticks else None)
    params: dict[str, Any] = {
        "fire_ids": fire_ids, "ticks": ticks, "message_ids": message_ids, "now": now,
        "scheduler": scheduler, "ids": ids, "nexts": nexts, "states": states,
        "lasts": lasts,
    }
    written = (await conn.execute(_FIRE, params)).one()
    result.fired = int(written.queued)
    return result


def _plan_row(row: Row[Any], now: datetime, grace: timedelta) -> Plan:
    runs_left = None if row.max_runs is None else row.max_runs - row.runs
    try:
        return plan(
            timing_of(row), row.next_fire_at, now, misfire=row.misfire, grace=grace,
            runs_left=runs_left,
        )
    except Exception:
        # One schedule that cannot be computed (say, its zone left the tz database) must not
        # block every schedule due after it: pause it, keep its next time, and say so.
        log.exception("schedule %s cannot be computed; pausing it", row.id)
        return Plan([], row.next_fire_at, broken=True)
