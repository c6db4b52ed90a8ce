"""Fire-time maths: DST in both hemispheres, a 30-minute shift, leap days, month ends, seconds."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tidings.errors import ConfigurationError
from tidings.scheduling.calendar import (
    InvalidSchedule,
    Timing,
    parse_duration,
    parse_instant,
    resolve_local,
)


def fires(expression: str, zone: str, after: str, count: int, kind: str = "cron") -> list[str]:
    """The next fire times after local time ``after``, as local ISO strings."""
    timing = Timing.parse(kind, expression, zone)
    start = parse_instant(after, timing.zone)
    return [t.astimezone(timing.zone).isoformat() for t in timing.upcoming(start, count)]


# -- spring forward: a wall-clock time that does not exist fires at the end of the gap ---------


@pytest.mark.parametrize(
    ("zone", "expression", "after", "expected"),
    [
        # London: 01:00 GMT -> 02:00 BST on 31 March 2024.
        ("Europe/London", "30 1 * * *", "2024-03-30T12:00",
         ["2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00"]),
        # New York: 02:00 EST -> 03:00 EDT on 10 March 2024.
        ("America/New_York", "30 2 * * *", "2024-03-09T12:00",
         ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]),
        # Sydney (southern hemisphere): 02:00 AEST -> 03:00 AEDT on 6 October 2024.
        ("Australia/Sydney", "30 2 * * *", "2024-10-05T12:00",
         ["2024-10-06T03:00:00+11:00", "2024-10-07T02:30:00+11:00"]),
        # Lord Howe shifts by 30 minutes: 02:00 +10:30 -> 02:30 +11:00 on 6 October 2024.
        ("Australia/Lord_Howe", "15 2 * * *", "2024-10-05T12:00",
         ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"]),
    ],
)
def test_a_skipped_wall_clock_time_fires_once_at_the_first_valid_instant_after_it(
    zone: str, expression: str, after: str, expected: list[str]
) -> None:
    assert fires(expression, zone, after, 2) == expected


def test_every_skipped_time_in_a_gap_fires_once_together() -> None:
    # 01:00, 01:15, 01:30 and 01:45 do not exist; all of them are 02:00 BST, fired once.
    assert fires("*/15 * * * *", "Europe/London", "2024-03-31T00:40", 4) == [
        "2024-03-31T00:45:00+00:00",
        "2024-03-31T02:00:00+01:00",
        "2024-03-31T02:15:00+01:00",
        "2024-03-31T02:30:00+01:00",
    ]


# -- fall back: a wall-clock time that occurs twice fires once, at its first occurrence ---------


@pytest.mark.parametrize(
    ("zone", "expression", "after", "expected"),
    [
        ("Europe/London", "30 1 * * *", "2024-10-26T12:00",
         ["2024-10-27T01:30:00+01:00", "2024-10-28T01:30:00+00:00"]),
        ("America/New_York", "30 1 * * *", "2024-11-02T12:00",
         ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]),
        # Sydney: 03:00 AEDT -> 02:00 AEST on 7 April 2024.
        ("Australia/Sydney", "30 2 * * *", "2024-04-06T12:00",
         ["2024-04-07T02:30:00+11:00", "2024-04-08T02:30:00+10:00"]),
        # Lord Howe: 02:00 +11:00 -> 01:30 +10:30 on 7 April 2024.
        ("Australia/Lord_Howe", "45 1 * * *", "2024-04-06T12:00",
         ["2024-04-07T01:45:00+11:00", "2024-04-08T01:45:00+10:30"]),
    ],
)
def test_a_repeated_wall_clock_time_fires_once(
    zone: str, expression: str, after: str, expected: list[str]
) -> None:
    assert fires(expression, zone, after, 2) == expected


def test_the_repeated_hour_is_not_fired_a_second_time() -> None:
    assert fires("*/30 * * * *", "Europe/London", "2024-10-27T00:10", 5) == [
        "2024-10-27T00:30:00+01:00",
        "2024-10-27T01:00:00+01:00",
        "2024-10-27T01:30:00+01:00",
        "2024-10-27T02:00:00+00:00",
        "2024-10-27T02:30:00+00:00",
    ]


def test_starting_inside_the_repeated_hour_does_not_go_back() -> None:
    timing = Timing.parse("cron", "*/20 * * * *", "Europe/London")
    second_pass = datetime(2024, 10, 27, 1, 5, tzinfo=UTC)  # 01:05 GMT, the second 01:05
    assert timing.next_after(second_pass) == datetime(2024, 10, 27, 2, 0, tzinfo=UTC)


def test_an_interval_is_an_exact_duration_across_a_dst_change() -> None:
    start = parse_instant("2024-10-27T00:00", ZoneInfo("Europe/London"))
    timing = Timing.parse("every", "1h", "Europe/London", start=start)
    times = timing.upcoming(start - timedelta(seconds=1), 4)
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(hours=1)] * 3
    assert [t.astimezone(timing.zone).isoformat() for t in times] == [
        "2024-10-27T00:00:00+01:00",
        "2024-10-27T01:00:00+01:00",
        "2024-10-27T01:00:00+00:00",
        "2024-10-27T02:00:00+00:00",
    ]


# -- calendars ----------------------------------------------------------------------------


def test_the_29th_of_february_fires_in_leap_years_only() -> None:
    assert fires("0 12 29 2 *", "UTC", "2024-03-01T00:00", 3) == [
        "2028-02-29T12:00:00+00:00",
        "2032-02-29T12:00:00+00:00",
        "2036-02-29T12:00:00+00:00",
    ]


def test_day_31_fires_only_in_months_that_have_one() -> None:
    assert fires("0 9 31 * *", "Europe/London", "2024-01-01T00:00", 4) == [
        "2024-01-31T09:00:00+00:00",
        "2024-03-31T09:00:00+01:00",
        "2024-05-31T09:00:00+01:00",
        "2024-07-31T09:00:00+01:00",
    ]


def test_l_is_the_last_day_of_every_month_leap_february_included() -> None:
    assert fires("0 9 L * *", "Australia/Sydney", "2024-01-15T00:00", 3) == [
        "2024-01-31T09:00:00+11:00",
        "2024-02-29T09:00:00+11:00",
        "2024-03-31T09:00:00+11:00",
    ]


def test_six_fields_put_seconds_first() -> None:
    assert fires("*/20 * * * * *", "UTC", "2024-05-01T10:00:00", 4) == [
        "2024-05-01T10:00:20+00:00",
        "2024-05-01T10:00:40+00:00",
        "2024-05-01T10:01:00+00:00",
        "2024-05-01T10:01:20+00:00",
    ]
    assert fires("30 0 9 * * 1", "America/New_York", "2024-03-08T00:00", 2) == [
        "2024-03-11T09:00:30-04:00",
        "2024-03-18T09:00:30-04:00",
    ]


def test_start_and_end_bound_the_fire_times() -> None:
    zone = ZoneInfo("UTC")
    timing = Timing.parse(
        "cron", "0 * * * *", "UTC",
        start=parse_instant("2024-01-01T10:00", zone), end=parse_instant("2024-01-01T12:00", zone),
    )
    times = timing.upcoming(datetime(2023, 1, 1, tzinfo=UTC), 10)
    assert [t.hour for t in times] == [10, 11, 12]


def test_a_one_shot_in_a_gap_or_an_overlap_is_read_like_cron() -> None:
    london = ZoneInfo("Europe/London")
    assert parse_instant("2024-03-31T01:30", london) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert parse_instant("2024-10-27T01:30", london) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert parse_instant("2024-10-27T01:30+00:00", london) == datetime(
        2024, 10, 27, 1, 30, tzinfo=UTC
    )


def test_resolve_local_finds_a_half_hour_transition() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    instant = resolve_local(datetime(2024, 10, 6, 2, 10), lord_howe)
    assert instant.astimezone(lord_howe).isoformat() == "2024-10-06T02:30:00+11:00"


# -- rejecting what cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expression", "zone", "message"),
    [
        ("cron", "61 * * * *", "UTC", "invalid cron expression '61 \\* \\* \\* \\*'"),
        ("cron", "* * * *", "UTC", "has 4 fields: use 5"),
        ("cron", "0 0 30 2 *", "UTC", "invalid cron expression"),
        ("cron", "0 9 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("cron", "0 9 * * *", "../etc/passwd", "unknown time zone"),
        ("every", "5 minutes", "UTC", "is not a duration"),
        ("every", "0s", "UTC", "longer than zero"),
        ("at", "next tuesday", "UTC", "is not an ISO-8601 time"),
        ("weekly", "x", "UTC", "not one of at, every, cron"),
    ],
)
def test_invalid_schedules_are_rejected_with_a_clear_message(
    kind: str, expression: str, zone: str, message: str
) -> None:
    with pytest.raises(InvalidSchedule, match=message) as caught:
        Timing.parse(kind, expression, zone)
    assert isinstance(caught.value, ConfigurationError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


# -- the span a schedule lives in: 1970 to 9000, intervals up to a hundred years -------------


@pytest.mark.parametrize("text", ["1000000w", "99999999999d", "36501d"])
def test_an_interval_longer_than_a_hundred_years_is_refused(text: str) -> None:
    with pytest.raises(InvalidSchedule, match="longer than 36500 days"):
        parse_duration(text)


@pytest.mark.parametrize("when", ["1969-07-20T20:17", "9999-12-31T23:00", "0001-01-01T00:00"])
@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])  # both sides of UTC
def test_an_instant_outside_1970_to_9000_is_refused_with_the_span(when: str, zone: str) -> None:
    with pytest.raises(InvalidSchedule, match="not between 1970-01-01 and 9000-01-01"):
        Timing.parse("at", when, zone)
    with pytest.raises(InvalidSchedule, match="not between"):
        Timing.parse("cron", "0 9 * * *", "UTC", start=datetime.fromisoformat(when))


def test_a_schedule_near_the_end_of_the_span_just_ends() -> None:
    timing = Timing.parse("cron", "0 0 29 2 *", "Pacific/Kiritimati")  # leap days only
    near_end = datetime(8999, 3, 1, tzinfo=UTC)
    assert timing.upcoming(near_end, 3) == []
    yearly = Timing.parse("every", "36500d", "UTC", start=datetime(8999, 1, 1, tzinfo=UTC))
    assert yearly.upcoming(near_end, 2) == []
