"""Property tests: cron fire times strictly increase and match the expression in local time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.scheduling.calendar import Timing, parse_duration

ZONES = ["UTC", "Europe/London", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe",
         "Asia/Kolkata"]
# DST changes of 2024 in those zones, so that many examples start next to one.
TRANSITIONS = [
    datetime(2024, 3, 10, 7, tzinfo=UTC), datetime(2024, 11, 3, 6, tzinfo=UTC),
    datetime(2024, 3, 31, 1, tzinfo=UTC), datetime(2024, 10, 27, 1, tzinfo=UTC),
    datetime(2024, 4, 6, 16, tzinfo=UTC), datetime(2024, 10, 5, 16, tzinfo=UTC),
    datetime(2024, 4, 6, 15, tzinfo=UTC), datetime(2024, 10, 5, 15, 30, tzinfo=UTC),
]


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]


def field(low: int, high: int, top: int | None = None) -> st.SearchStrategy[Field]:
    """Field texts with the values they stand for; ``*`` and ``*/n`` cover ``low..top``."""
    span = range(low, (top or high) + 1)
    star = st.just(Field("*", frozenset(span)))
    single = st.integers(low, high).map(lambda v: Field(str(v), frozenset({v})))
    listed = st.sets(st.integers(low, high), min_size=2, max_size=4).map(
        lambda vs: Field(",".join(map(str, sorted(vs))), frozenset(vs))
    )
    ranged = st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda ab: Field(f"{min(ab)}-{max(ab)}", frozenset(range(min(ab), max(ab) + 1)))
    )
    step = st.integers(2, max(2, (high - low) // 2)).map(
        lambda n: Field(f"*/{n}", frozenset(v for v in span if (v - low) % n == 0))
    )
    return st.one_of(star, single, listed, ranged, step)


@dataclass(frozen=True)
class Cron:
    minute: Field
    hour: Field
    dom: Field
    month: Field
    dow: Field

    @property
    def text(self) -> str:
        return " ".join(f.text for f in (self.minute, self.hour, self.dom, self.month, self.dow))

    def matches(self, wall: datetime) -> bool:
        """Cron's rule, written out: day-of-month OR day-of-week when both are restricted."""
        if wall.second or wall.minute not in self.minute.values:
            return False
        if wall.hour not in self.hour.values or wall.month not in self.month.values:
            return False
        dom = wall.day in self.dom.values
        dow = (wall.weekday() + 1) % 7 in self.dow.values
        if self.dom.text.startswith("*") or self.dow.text.startswith("*"):
            return dom and dow
        return dom or dow


crons = st.builds(
    Cron, field(0, 59), field(0, 23), field(1, 28, top=31), field(1, 12), field(0, 6)
)
starts = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-180, 180)).map(
        lambda t: t[0] + timedelta(minutes=t[1])
    ),
)


def wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def skipped_times_before(instant: datetime, zone: ZoneInfo) -> list[datetime]:
    """The wall-clock minutes that do not exist because of a gap ending at ``instant``."""
    before = wall(instant - timedelta(seconds=1), zone) + timedelta(seconds=1)
    end = wall(instant, zone)
    minutes = []
    while before < end:
        minutes.append(before)
        before += timedelta(minutes=1)
    return minutes


@settings(max_examples=300, deadline=None)
@given(cron=crons, zone_name=st.sampled_from(ZONES), start=starts)
def test_cron_fire_times_increase_and_match_the_expression_in_local_time(
    cron: Cron, zone_name: str, start: datetime
) -> None:
    timing = Timing.parse("cron", cron.text, zone_name)
    zone = timing.zone
    times = timing.upcoming(start, 8)

    assert times, "day-of-month 1-28 exists in every month, so there is always a next time"
    assert all(a < b for a, b in zip([start, *times], times, strict=False))
    for t in times:
        if not cron.matches(wall(t, zone)):
            # Only the end of a DST gap may stand in for skipped times that match.
            assert any(cron.matches(w) for w in skipped_times_before(t, zone)), t


@settings(max_examples=150, deadline=None)
@given(cron=crons, zone_name=st.sampled_from(ZONES), start=starts)
def test_no_matching_wall_clock_time_is_left_out(
    cron: Cron, zone_name: str, start: datetime
) -> None:
    timing = Timing.parse("cron", cron.text, zone_name)
    zone = timing.zone
    times = timing.upcoming(start, 6)
    horizon = min(times[-1], start + timedelta(days=2))
    fired = {t for t in times if t <= horizon}

    # Every existing wall-clock minute between start and horizon that matches has fired,
    # unless it is the second pass of a repeated hour.
    instant = (start + timedelta(minutes=1)).replace(second=0, microsecond=0)
    while instant <= horizon:
        first_pass = not instant.astimezone(zone).fold
        if cron.matches(wall(instant, zone)) and first_pass:
            assert instant in fired, instant
        instant += timedelta(minutes=1)


@settings(max_examples=100, deadline=None)
@given(
    period=st.sampled_from(["1s", "45s", "15m", "1h", "1h30m", "1d", "1w"]),
    zone_name=st.sampled_from(ZONES),
    start=starts,
)
def test_interval_fire_times_are_exact_durations_apart(
    period: str, zone_name: str, start: datetime
) -> None:
    timing = Timing.parse("every", period, zone_name, start=start)
    times = timing.upcoming(start - timedelta(microseconds=1), 5)
    assert times[0] == start
    assert {b - a for a, b in itertools.pairwise(times)} == {parse_duration(period)}
