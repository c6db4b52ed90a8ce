"""Fire-time maths: when a one-shot, interval or cron schedule fires, in an IANA time zone.

A cron expression names wall-clock times in the schedule's zone. A wall-clock time that does not
exist (spring forward) fires once, at the first valid instant after it, the end of the gap; one
that occurs twice (fall back) fires once, at its first occurrence. Intervals are exact durations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tidings.errors import ConfigurationError

Kind = Literal["at", "every", "cron"]
KINDS: tuple[Kind, ...] = ("at", "every", "cron")

_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)\s*([wdhms])")
_TINY = timedelta(microseconds=1)
# The span a schedule can live in: the messages it publishes carry Unix-epoch milliseconds, and
# datetime ends in year 9999 (with room left for a cron or interval step from the last tick).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
MAX_INTERVAL = timedelta(days=36_500)


class InvalidSchedule(ConfigurationError):
    """A cron expression, interval, instant or time zone that cannot be used as given."""


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/London``, ``UTC``); InvalidSchedule if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/London' or 'UTC'"
        ) from None


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``: an exact, positive duration."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InvalidSchedule(
            f"interval {text!r} is not a duration: write e.g. '90s', '15m', '1h30m', '2d', '1w'"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidSchedule(f"interval {text!r} must be longer than zero")
    if seconds > MAX_INTERVAL.total_seconds():
        raise InvalidSchedule(f"interval {text!r} is longer than {MAX_INTERVAL.days} days")
    return timedelta(seconds=seconds)


def check_cron(expression: str) -> str:
    """The expression, normalised to single spaces; InvalidSchedule if cron cannot parse it."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule(
            f"cron expression {expression!r} has {len(fields)} fields: use 5 (minute hour"
            " day-of-month month day-of-week) or 6 (seconds first)"
        )
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        raise InvalidSchedule(f"invalid cron expression {expression!r}: {exc}") from None
    return " ".join(fields)


def resolve_local(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a naive wall-clock time names in ``zone``.

    A repeated time gives its first occurrence; a skipped time gives the end of the gap.
    """
    first = wall.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # In a gap fold=0 applies the offset from before the transition (later in UTC) and fold=1
    # the offset from after it (earlier in UTC); the transition lies between the two.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    after = utc.astimezone(zone).utcoffset()
    lo, hi = 0, int((utc - low).total_seconds())
    while lo < hi:
        mid = (lo + hi) // 2
        if (low + timedelta(seconds=mid)).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid + 1
    return low + timedelta(seconds=lo)


def parse_instant(text: str, zone: ZoneInfo) -> datetime:
    """An ISO-8601 time as a UTC instant; without an offset it is wall-clock time in ``zone``."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidSchedule(
            f"{text!r} is not an ISO-8601 time: write e.g. '2026-03-29T09:30' or"
            " '2026-03-29T09:30:00+01:00'"
        ) from None
    return aware(value, zone)


def aware(value: datetime, zone: ZoneInfo) -> datetime:
    """``value`` as a UTC instant; a naive value is wall-clock time in ``zone``. InvalidSchedule
    outside 1970 to 9000 (UTC), the span a schedule can fire in."""
    try:
        instant = resolve_local(value, zone) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        instant = EARLIEST - _TINY if value.year < 1970 else LATEST + _TINY
    if not EARLIEST <= instant <= LATEST:
        raise InvalidSchedule(f"{value.isoformat()} is not between {EARLIEST:%Y-%m-%d} and"
                              f" {LATEST:%Y-%m-%d} (UTC): a schedule fires in that span")
    return instant


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: its kind and expression in a zone, bounded by start and end."""

    kind: Kind
    expression: str
    zone: ZoneInfo
    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def parse(
        cls, kind: str, expression: str, timezone: str = "UTC",
        start: datetime | None = None, end: datetime | None = None,
    ) -> Timing:
        """Validate everything up front, so a bad schedule never reaches the database."""
        zone = parse_zone(timezone)
        if kind == "cron":
            expression = check_cron(expression)
        elif kind == "every":
            parse_duration(expression)
        elif kind == "at":
            expression = parse_instant(expression, zone).isoformat()
        else:
            raise InvalidSchedule(f"schedule kind {kind!r} is not one of at, every, cron")
        start = None if start is None else aware(start, zone)
        end = None if end is None else aware(end, zone)
        if start is not None and end is not None and end < start:
            raise InvalidSchedule("the schedule ends before it starts: check --start and --end")
        return cls(kind, expression, zone, start, end)  # type: ignore[arg-type]

    @property
    def timezone(self) -> str:
        return self.zone.key

    def first(self, now: datetime) -> datetime | None:
        """The first fire time of a schedule created (or re-timed) at ``now``."""
        if self.kind == "at":
            return self._bounded(datetime.fromisoformat(self.expression))
        if self.kind == "every" and self.start is None:
            # Whole seconds keep the grid readable: 09:00:05, not 09:00:05.944044.
            return self._bounded(now.replace(microsecond=0) + parse_duration(self.expression))
        if self.start is not None and self.start > now:
            return self.next_after(self.start - _TINY)
        return self.next_after(now)

    def next_after(self, instant: datetime, anchor: datetime | None = None) -> datetime | None:
        """The first fire time strictly after ``instant`` (an aware datetime); None if none.

        An interval without a start keeps to the grid through ``anchor``, any earlier tick.
        """
        if self.kind == "at":
            at = datetime.fromisoformat(self.expression)
            return self._bounded(at) if at > instant else None
        if self.start is not None and instant < self.start:
            instant = self.start - _TINY
        if self.kind == "every":
            return self._bounded(self._next_interval(instant, self.start or anchor or instant))
        return self._bounded(self._next_cron(instant))

    def _next_interval(self, instant: datetime, anchor: datetime) -> datetime:
        period = parse_duration(self.expression)
        steps = (instant - anchor) // period + 1
        return anchor + steps * period

    def _next_cron(self, instant: datetime) -> datetime | None:
        # Walk wall-clock matches from the wall-clock time of `instant`: mapping wall times to
        # instants never goes backwards, so no later match can precede this point.
        wall = instant.astimezone(self.zone).replace(tzinfo=None)
        try:
            for match in CronSim(self.expression, wall):
                candidate = resolve_local(match, self.zone)
                if candidate > instant:
                    return candidate
        except (StopIteration, CronSimError, OverflowError):  # (no match before year 9999)
            return None
        return None

    def _bounded(self, instant: datetime | None) -> datetime | None:
        if instant is None or instant > LATEST or (self.end is not None and instant > self.end):
            return None
        return instant.astimezone(UTC)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times strictly after ``after``, fewer if the schedule ends."""
        times: list[datetime] = []
        nxt = self.first(after)
        while nxt is not None and len(times) < count:
            times.append(nxt)
            nxt = self.next_after(nxt)
        return times
