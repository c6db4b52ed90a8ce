"""Roll delivery events up into per-minute, per-hour and per-day statistics.

Each event counts once under the outcome of its state (sent, failed, filtered, delayed, dead;
accepted and sending are steps, not outcomes). A ``sent`` or ``failed`` event with an attempt
number above 1 *also* counts once as ``retried``: the failed attempt before it was followed by
another. It is counted when the retry happens, so a rolled-up minute never changes later.
``retried`` is therefore never part of a total. Latency (sent only) is event time minus the
message's acceptance, summed, maxed and counted in fixed histogram buckets.

The watermark follows ``recorded_at`` (when the event was written), not ``at``: a window of
complete minutes, ``settle`` behind ``now`` so that no transaction still open can add to it, is
aggregated in one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE`` per level, each level
straight from the events. An event written late still lands in the minute, hour and day of its
``at``; no level is derived from another, so deleting old minutes never loses hours. Windows
and the watermark move in one transaction under an advisory lock: two processes rolling up at
once count every event once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.analytics.histogram import BOUNDS, SIZE
from tidings.tables.analytics import DIMENSIONS, LEVELS

WATERMARK = "delivery_stats"
COLUMNS = ("bucket", *DIMENSIONS, "outcome", "count", "latency_ms_sum", "latency_ms_max",
           "latency_ms_buckets")
_KEY = ", ".join(("bucket", *DIMENSIONS, "outcome"))
_BOUNDS = "ARRAY[{}]::double precision[]".format(", ".join(map(str, BOUNDS)))
_HISTOGRAM = "ARRAY[{}]::bigint[]".format(
    ", ".join(f"count(*) FILTER (WHERE w.b = {i})" for i in range(SIZE))
)


def events_select(unit: str, where: str) -> str:
    """SQL aggregating the delivery events that match ``where`` into stats rows (COLUMNS) per
    ``unit`` ('minute', 'hour' or 'day', in UTC whatever the session's time zone) of their
    time."""
    if unit not in LEVELS:
        raise ValueError(f"unit {unit!r} is not one of {', '.join(LEVELS)}")
    return f"""
SELECT date_trunc('{unit}', e.at, 'UTC') AS bucket, coalesce(q.topic, m.topic) AS queue,
       e.channel, coalesce(e.provider, '') AS provider, coalesce(m.tenant, '') AS tenant,
       coalesce(m.type, '') AS type, o.outcome, count(*) AS count,
       coalesce(sum(l.ms), 0) AS latency_ms_sum, coalesce(max(l.ms), 0) AS latency_ms_max,
       {_HISTOGRAM} AS latency_ms_buckets
FROM delivery_events AS e
JOIN messages AS m ON m.id = e.message_id
LEFT JOIN (SELECT DISTINCT ON (channel) channel, topic FROM queue_configs
           ORDER BY channel, name) AS q ON q.channel = e.channel
CROSS JOIN LATERAL (VALUES
    (CASE WHEN e.state IN ('sent', 'failed', 'filtered', 'delayed', 'dead') THEN e.state END),
    (CASE WHEN e.state IN ('sent', 'failed') AND e.attempt > 1 THEN 'retried' END)
) AS o(outcome)
CROSS JOIN LATERAL (SELECT CASE WHEN o.outcome = 'sent' THEN greatest(
    extract(epoch FROM e.at - m.created_at) * 1000, 0)::double precision END AS ms) AS l
CROSS JOIN LATERAL (SELECT width_bucket(l.ms, {_BOUNDS}) AS b) AS w
WHERE o.outcome IS NOT NULL AND ({where})
GROUP BY 1, 2, 3, 4, 5, 6, 7"""


def _upsert(level: str) -> str:
    return f"""
INSERT INTO delivery_stats_{level} AS d ({", ".join(COLUMNS)})
{events_select(level, "e.recorded_at >= :start AND e.recorded_at < :end")}
ON CONFLICT ({_KEY}) DO UPDATE SET
    count = d.count + excluded.count,
    latency_ms_sum = d.latency_ms_sum + excluded.latency_ms_sum,
    latency_ms_max = greatest(d.latency_ms_max, excluded.latency_ms_max),
    latency_ms_buckets = tidings_buckets_add(d.latency_ms_buckets, excluded.latency_ms_buckets)
"""


_UPSERTS = {level: text(_upsert(level)) for level in LEVELS}
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('tidings.rollup.' || current_schema()))")
_NOW = text("SELECT now()")
_POSITION = text("SELECT position FROM analytics_watermarks WHERE name = :name")
_FIRST = text("SELECT date_trunc('minute', min(recorded_at)) FROM delivery_events")
_MOVE = text("""
INSERT INTO analytics_watermarks (name, position) VALUES (:name, :position)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()
""")


@dataclass(frozen=True, slots=True)
class RollUp:
    """What one :func:`roll_up` did: the windows aggregated, and the watermark it left."""

    windows: int
    rows: int  # stats rows inserted or updated, all levels
    watermark: datetime | None


def window_end(now: datetime, settle: timedelta) -> datetime:
    """The end of the complete minutes a roll-up at ``now`` may take."""
    return (now - settle).replace(second=0, microsecond=0)


async def watermark(conn: AsyncConnection) -> datetime | None:
    """Events recorded before this instant are in the roll-ups (None: nothing rolled up yet)."""
    position: datetime | None = (
        await conn.execute(_POSITION, {"name": WATERMARK})
    ).scalar_one_or_none()
    return position


async def roll_up(
    engine: AsyncEngine,
    now: datetime,
    *,
    settle: timedelta = timedelta(minutes=1),
    step: timedelta = timedelta(hours=1),
) -> RollUp:
    """Aggregate the events recorded since the watermark, up to the last complete minute
    ``settle`` before ``now``, in windows of at most ``step`` (one transaction each).

    The window never ends later than ``settle`` before the database's clock: a ``now`` in
    the future (tests) cannot move the watermark past events still to be written.
    """
    windows = rows = 0
    position: datetime | None = None
    end: datetime | None = None
    while True:
        async with engine.begin() as conn:
            await conn.execute(_LOCK)
            if end is None:  # fixed once: later windows must not chase the clock
                clock: datetime = (await conn.execute(_NOW)).scalar_one()
                end = min(window_end(now, settle), clock - settle)
            position = await watermark(conn)
            start = position or (await conn.execute(_FIRST)).scalar_one_or_none() or end
            if start >= end:
                if position is None:  # nothing recorded yet: start from here
                    await conn.execute(_MOVE, {"name": WATERMARK, "position": end})
                    position = end
                return RollUp(windows, rows, position)
            stop = min(end, start + step)
            for upsert in _UPSERTS.values():
                done = await conn.execute(upsert, {"start": start, "end": stop})
                rows += done.rowcount
            await conn.execute(_MOVE, {"name": WATERMARK, "position": stop})
            windows += 1
