"""Recipient preferences and the decision they imply: send now, skip, or wait out quiet hours.

Quiet hours are local wall-clock times in the recipient's own IANA zone: ``22:00-07:00`` wraps
past midnight, the start is inside the window and the end is not. A message caught in them is
delayed to the window's end, computed in that zone, so DST changes move it correctly (an end
that falls in a spring-forward gap becomes the first instant after the gap). ``critical``
priority bypasses quiet hours; it never bypasses an opt-out, which is the user's consent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Any, get_args
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.coalesce import Coalesced
from tidings.direct import DirectPool, Statement, json_param
from tidings.errors import ConfigurationError
from tidings.notification import (
    Channel,
    Notification,
    NotificationPriority,
    check_key,
    check_timezone,
)
from tidings.tables.preferences import preferences as preferences_table

_CHANNELS: frozenset[str] = frozenset(get_args(Channel))


class PreferencesError(ConfigurationError):
    """Preferences that cannot work as given: an unknown channel, a bad zone or window."""


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window of local wall-clock time; ``start > end`` wraps past midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise PreferencesError("quiet hours are local wall-clock times: drop the tzinfo")
        if self.start == self.end:
            raise PreferencesError("quiet hours need a start different from their end")

    def contains(self, local: time) -> bool:
        """Whether the wall-clock time ``local`` falls inside the window."""
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True, slots=True)
class Preferences:
    """One user's choices. ``timezone`` None means the notification's recipient zone, else UTC."""

    user_id: str
    tenant: str = "default"
    opted_out: frozenset[Channel] = frozenset()
    channel_order: tuple[Channel, ...] = ()
    quiet_hours: QuietHours | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        for what, key in (("user_id", self.user_id), ("tenant", self.tenant)):
            try:  # the contract's rule: preferences no notification could name are no use
                check_key(key)
            except ValueError as exc:
                raise PreferencesError(f"{what} {key[:40]!r}: {exc}") from None
        unknown = (set(self.opted_out) | set(self.channel_order)) - _CHANNELS
        if unknown:
            raise PreferencesError(f"unknown channel(s) {', '.join(sorted(unknown))}; "
                                   f"use {', '.join(sorted(_CHANNELS))}")
        if len(set(self.channel_order)) != len(self.channel_order):
            raise PreferencesError("a channel is listed twice in channel_order")
        if self.timezone is not None:
            try:
                check_timezone(self.timezone)
            except ValueError as exc:
                raise PreferencesError(f"timezone {self.timezone!r}: {exc}") from None


class Outcome(StrEnum):
    SEND = "send"
    SKIP = "skip"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one notification on one channel; ``until`` is set for a delay."""

    outcome: Outcome
    reason: str | None = None
    until: datetime | None = None


SEND = Decision(Outcome.SEND)


def decide(
    preferences: Preferences | None, notification: Notification, channel: Channel, now: datetime
) -> Decision:
    """Send, skip (opted out) or delay (quiet hours) ``notification`` on ``channel`` at ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if preferences is None:
        return SEND
    if channel in preferences.opted_out:
        return Decision(Outcome.SKIP, f"user opted out of {channel}")
    quiet = preferences.quiet_hours
    if quiet is None or notification.priority is NotificationPriority.CRITICAL:
        return SEND
    zone = ZoneInfo(preferences.timezone or notification.recipient.timezone or "UTC")
    local = now.astimezone(zone)
    if not quiet.contains(_wall(local)):
        return SEND
    until = quiet_end_after(quiet, now, zone)
    return Decision(Outcome.DELAY, f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M} "
                                   f"{zone.key}", until)


def quiet_end_after(quiet: QuietHours, now: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after ``now`` at which the window ends: local time reads ``end``.

    An end skipped by a spring-forward gap resolves to the first instant after the gap; an
    end read twice (the hour clocks go back) is the first of its readings after ``now``; an
    end that lands back inside the window (a window wrapping into the gap) waits a day more.
    Compared as UTC instants: two times of one zone compare by their clock readings alone.
    Returned in ``zone``.
    """
    at = now.astimezone(UTC)
    day = at.astimezone(zone).date()
    for days in range(3):
        naive = datetime.combine(day + timedelta(days=days), quiet.end)
        ends = [end for end in (_resolve(naive, zone, fold) for fold in (0, 1))
                if end.astimezone(UTC) > at and not quiet.contains(_wall(end))]
        if ends:
            return min(ends, key=lambda end: end.astimezone(UTC))
    raise AssertionError("unreachable: a quiet window ends within three days")


def _wall(instant: datetime) -> time:
    return instant.time().replace(tzinfo=None)


def _resolve(naive: datetime, zone: ZoneInfo, fold: int = 0) -> datetime:
    """``naive`` as an aware time in ``zone``: its first occurrence (``fold`` 1: its second,
    where it occurs twice), or the end of its gap."""
    aware = naive.replace(tzinfo=zone, fold=fold)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return aware
    # In a gap the two folds read on either side of the transition; find it to the second.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = aware.astimezone(UTC)
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) > naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0).astimezone(zone)


def _preferences(row: Mapping[Any, Any]) -> Preferences:
    start, end = row["quiet_start"], row["quiet_end"]
    return Preferences(
        user_id=row["user_id"], tenant=row["tenant"], opted_out=frozenset(row["opted_out"]),
        channel_order=tuple(row["channel_order"]),
        quiet_hours=None if start is None else QuietHours(start, end),
        timezone=row["timezone"],
    )


class PreferenceStore:
    """Preferences in PostgreSQL: upsert one, read many in one query."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, preferences: Preferences) -> None:
        """Create or replace one user's preferences."""
        quiet = preferences.quiet_hours
        values = {
            "tenant": preferences.tenant, "user_id": preferences.user_id,
            "opted_out": sorted(preferences.opted_out),
            "channel_order": list(preferences.channel_order),
            "quiet_start": quiet.start if quiet else None,
            "quiet_end": quiet.end if quiet else None,
            "timezone": preferences.timezone,
        }
        stmt = insert(preferences_table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "user_id"],
            set_={**{k: stmt.excluded[k] for k in values if k not in ("tenant", "user_id")},
                  "updated_at": func.now()},
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def get_many(
        self, user_ids: Iterable[str], *, tenant: str = "default"
    ) -> dict[str, Preferences]:
        """Preferences of those of ``user_ids`` who have any, by user id."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        c = preferences_table.c
        query = select(preferences_table).where(c.tenant == tenant, c.user_id.in_(ids))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.user_id: _preferences(row._mapping) for row in rows}


_PAIRS = Statement.parse("""
SELECT p.tenant, p.user_id, p.opted_out, p.channel_order, p.quiet_start, p.quiet_end,
       p.timezone
FROM preferences AS p
JOIN (SELECT DISTINCT key->>0 AS tenant, key->>1 AS user_id
      FROM json_array_elements(CAST(:keys AS json)) AS key) AS k USING (tenant, user_id)
""")


class PreferenceLookup:
    """The pipeline's read of preferences: one batch's recipients in one statement."""

    def __init__(self, direct: DirectPool) -> None:
        self._direct = direct
        self._lookups = Coalesced(self._get_together)

    async def get_pairs(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Preferences]:
        """Preferences for (tenant, user_id) pairs across tenants, in one query (shared with
        the lookups made while another is in flight: see tidings.coalesce)."""
        return await self._lookups(keys) if keys else {}

    async def _get_together(
        self, calls: list[Sequence[tuple[str, str]]]
    ) -> list[dict[tuple[str, str], Preferences]]:
        keys = list(dict.fromkeys(key for keys in calls for key in keys))
        rows = await self._direct.fetch(_PAIRS, {"keys": json_param(keys)})
        found = {(row["tenant"], row["user_id"]): _preferences(row) for row in rows}
        return [{key: found[key] for key in keys if key in found} for keys in calls]
