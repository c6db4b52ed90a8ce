"""The delivery report: a period's numbers by outcome, by a dimension, over time, against the
period before, with trends, peak hours, top types and top failure reasons.

Numbers come from the roll-ups plus, for events not rolled up yet (recorded after the
watermark), the same aggregation run on the events themselves: a report is exact up to now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.analytics.rollup import COLUMNS, events_select, watermark
from tidings.analytics.stats import Stats, change
from tidings.tables.analytics import OUTCOMES

Dimension = Literal["channel", "provider", "tenant", "type", "queue"]
DIMENSIONS: tuple[Dimension, ...] = ("channel", "provider", "tenant", "type", "queue")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
TRENDS = (("hour", timedelta(hours=1), "minute"), ("day", timedelta(days=1), "minute"),
          ("week", timedelta(days=7), "hour"))

_FAILURES = text("""
SELECT coalesce(error, '(no error given)') AS error, count(*) AS n FROM delivery_events
WHERE state IN ('failed', 'dead') AND at >= :start AND at < :end
GROUP BY 1 ORDER BY n DESC, error LIMIT :limit
""")


@dataclass(frozen=True, slots=True)
class Trend:
    """One period (the last hour, day or week) against the one before it."""

    name: str
    current: Stats
    previous: Stats

    @property
    def change(self) -> float | None:
        """Relative change of the total."""
        return change(self.current.total, self.previous.total)


@dataclass(slots=True)
class Report:
    """Everything ``tidings report`` shows; see the module docstring."""

    start: datetime
    end: datetime
    level: str  # the roll-up table read: minute, hour or day
    by: Dimension
    total: Stats
    previous: Stats  # the period of the same length just before
    rows: dict[str, Stats]
    series: dict[datetime, Stats]  # every minute, hour or day of the period, empty ones too
    trends: list[Trend] = field(default_factory=list)
    hours_of_day: list[int] = field(default_factory=list)  # total per UTC hour 0-23
    peak_hours: list[tuple[int, int]] = field(default_factory=list)  # (UTC hour, total)
    top_types: list[tuple[str, int]] = field(default_factory=list)
    failures: list[tuple[str, int]] = field(default_factory=list)  # (error, count)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able document of the whole report."""
        return {
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat(),
                       "level": self.level},
            "total": self.total.to_json(),
            "previous": self.previous.to_json(),
            "change": change(self.total.total, self.previous.total),
            "by": self.by,
            "rows": {key: stats.to_json() for key, stats in self.rows.items()},
            "series": [{"at": at.isoformat(), **{o: s.count(o) for o in OUTCOMES}}
                       for at, s in sorted(self.series.items())],
            "trends": [{"period": t.name, "current": t.current.total,
                        "previous": t.previous.total, "change": t.change,
                        "success_rate": t.current.success_rate,
                        "previous_success_rate": t.previous.success_rate} for t in self.trends],
            "hours_of_day": self.hours_of_day,
            "peak_hours": [{"hour": h, "count": n} for h, n in self.peak_hours],
            "top_types": [{"type": t, "count": n} for t, n in self.top_types],
            "failures": [{"error": e, "count": n} for e, n in self.failures],
        }


def level_for(length: timedelta) -> str:
    """The roll-up to read ``length`` back from now in: the finest that shows it in enough
    detail and, with the default retention (minutes 7 days, hours 90), still holds all of it.
    A report reads twice its period (the period before, for the trends)."""
    if length <= timedelta(days=4):
        return "minute"
    return "hour" if length <= timedelta(days=90) else "day"


def series_unit_for(length: timedelta) -> str:
    """The bar width of the report's chart over time: at most a few hundred bars."""
    if length <= timedelta(hours=3):
        return "minute"
    return "hour" if length <= timedelta(days=4) else "day"


def _range(first: datetime, end: datetime, step: timedelta) -> list[datetime]:
    count = int((end - first) / step) + 1
    return [first + i * step for i in range(count) if first + i * step < end]


def truncate(instant: datetime, unit: str) -> datetime:
    """``instant`` rounded down to its minute, hour or (UTC) day."""
    instant = instant.astimezone(UTC).replace(second=0, microsecond=0)
    if unit in ("hour", "day"):
        instant = instant.replace(minute=0)
    return instant.replace(hour=0) if unit == "day" else instant


async def aggregate(
    conn: AsyncConnection, level: str, start: datetime, end: datetime, key: str,
    params: dict[str, Any] | None = None,
) -> dict[Any, Stats]:
    """Stats per ``key`` (an SQL expression over the stats columns, written by this module)
    of the deliveries whose time falls in [start, end), at roll-up ``level``."""
    position = await watermark(conn) or _EPOCH
    columns = ", ".join(COLUMNS)
    live = events_select(level, f"e.at >= :start AND e.recorded_at >= :position "
                                f"AND date_trunc('{level}', e.at, 'UTC') < :end")
    query = text(f"""
WITH rows AS (
    SELECT {columns} FROM delivery_stats_{level} WHERE bucket >= :start AND bucket < :end
    UNION ALL {live}
)
SELECT {key} AS key, outcome, sum(count)::bigint AS n, sum(latency_ms_sum) AS lsum,
       max(latency_ms_max) AS lmax, tidings_buckets_sum(latency_ms_buckets) AS buckets
FROM rows GROUP BY 1, 2 ORDER BY 1, 2
""")
    found: dict[Any, Stats] = {}
    values = {"start": start, "end": end, "position": position, **(params or {})}
    for row in await conn.execute(query, values):
        found.setdefault(row.key, Stats()).add(row.outcome, row.n, row.lsum, row.lmax,
                                               row.buckets)
    return found


async def _pair(conn: AsyncConnection, level: str, start: datetime, middle: datetime,
                end: datetime) -> tuple[Stats, Stats]:
    """Stats of [middle, end) and of [start, middle), in one pass."""
    key = "CASE WHEN bucket >= :middle THEN 'current' ELSE 'previous' END"
    found = await aggregate(conn, level, start, end, key, {"middle": middle})
    return found.get("current", Stats()), found.get("previous", Stats())


async def build_report(
    engine: AsyncEngine, now: datetime, since: timedelta, by: Dimension = "channel",
    *, failures: int = 10, types: int = 10,
) -> Report:
    """The report of the deliveries of the last ``since`` before ``now``, rows ``by`` one
    dimension."""
    if by not in DIMENSIONS:
        raise ValueError(f"cannot report by {by!r}: use one of {', '.join(DIMENSIONS)}")
    level = level_for(2 * since)
    start = truncate(now - since, level)
    series_unit = series_unit_for(since)
    async with engine.connect() as conn:
        # One snapshot for every read: a roll-up committed between two of them (tidings
        # maintain, every minute) would count its window in both the roll-ups and the events.
        await conn.execution_options(isolation_level="REPEATABLE READ")
        await conn.begin()
        total, previous = await _pair(conn, level, start - (now - start), start, now)
        rows = await aggregate(conn, level, start, now, by)
        series_key = f"date_trunc('{series_unit}', bucket, 'UTC')"
        series = await aggregate(conn, level, start, now, series_key)
        hours: dict[int, Stats] = {}
        if level != "day":
            hour_key = "extract(hour FROM bucket AT TIME ZONE 'UTC')::integer"
            hours = await aggregate(conn, level, start, now, hour_key)
        by_type = await aggregate(conn, level, start, now, "type")
        trends = []
        for name, period, unit in TRENDS:
            middle = truncate(now - period, unit)
            current, before = await _pair(conn, unit, middle - period, middle, now)
            trends.append(Trend(name, current, before))
        found = await conn.execute(_FAILURES, {"start": start, "end": now, "limit": failures})
        reasons = [(row.error, row.n) for row in found]
    step = _STEP[series_unit]
    every = {at: Stats() for at in _range(truncate(start, series_unit), now, step)}
    return Report(
        start=start, end=now, level=level, by=by, total=total, previous=previous,
        rows=rows, series=every | series, trends=trends,
        hours_of_day=[hours[h].total if h in hours else 0 for h in range(24)] if hours else [],
        peak_hours=sorted(((h, s.total) for h, s in hours.items()),
                          key=lambda item: (-item[1], item[0]))[:5],
        top_types=sorted(((t or "(none)", s.total) for t, s in by_type.items()),
                         key=lambda item: (-item[1], item[0]))[:types],
        failures=reasons,
    )
