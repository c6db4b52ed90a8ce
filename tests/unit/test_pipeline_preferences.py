"""Opt-outs, quiet hours in the recipient's zone (DST included) and the decision they imply."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.notification import Notification
from tidings.pipelines.preferences import (
    Decision,
    Outcome,
    Preferences,
    PreferencesError,
    QuietHours,
    decide,
)


def _notification(priority: str = "normal", timezone: str | None = None) -> Notification:
    return Notification.model_validate({
        "type": "order.shipped",
        "recipient": {"user_id": "u1", "email": "ada@example.com", "timezone": timezone},
        "content": {"body": "shipped"},
        "priority": priority,
    })


def _prefs(start: time | None = time(22), end: time = time(7), **fields: Any) -> Preferences:
    quiet = None if start is None else QuietHours(start, end)
    return Preferences(user_id="u1", quiet_hours=quiet, **fields)


def _at(zone: str, *wall: int) -> datetime:
    return datetime(*wall, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


# -- examples --------------------------------------------------------------------------------


def test_without_preferences_everything_is_sent() -> None:
    assert decide(None, _notification(), "email", datetime.now(UTC)) == Decision(Outcome.SEND)


def test_an_opted_out_channel_is_skipped_with_a_reason() -> None:
    prefs = _prefs(None, opted_out=frozenset({"sms"}))

    decision = decide(prefs, _notification(), "sms", datetime.now(UTC))

    assert decision == Decision(Outcome.SKIP, "user opted out of sms")


def test_critical_priority_does_not_bypass_an_opt_out() -> None:
    prefs = _prefs(None, opted_out=frozenset({"email"}))

    assert decide(prefs, _notification("critical"), "email", datetime.now(UTC)).outcome == "skip"


def test_inside_wrapping_quiet_hours_the_message_waits_until_they_end() -> None:
    prefs = _prefs(timezone="Europe/Lisbon")
    now = _at("Europe/Lisbon", 2026, 6, 1, 23, 30)

    decision = decide(prefs, _notification(), "email", now)

    assert decision.outcome is Outcome.DELAY
    assert decision.until == _at("Europe/Lisbon", 2026, 6, 2, 7, 0)
    assert decision.reason == "quiet hours 22:00-07:00 Europe/Lisbon"


def test_after_midnight_the_window_ends_the_same_morning() -> None:
    decision = decide(_prefs(timezone="Asia/Tokyo"), _notification(), "push",
                      _at("Asia/Tokyo", 2026, 6, 2, 3, 0))

    assert decision.until == _at("Asia/Tokyo", 2026, 6, 2, 7, 0)


def test_the_window_end_is_outside_and_its_start_inside() -> None:
    prefs = _prefs(timezone="UTC")

    assert decide(prefs, _notification(), "email", _at("UTC", 2026, 6, 2, 7, 0)).outcome == "send"
    assert decide(prefs, _notification(), "email", _at("UTC", 2026, 6, 2, 22, 0)).outcome == (
        "delay"
    )


def test_critical_priority_bypasses_quiet_hours() -> None:
    now = _at("UTC", 2026, 6, 1, 23, 0)

    assert decide(_prefs(timezone="UTC"), _notification("critical"), "sms", now).outcome == "send"


def test_the_recipient_timezone_applies_when_preferences_have_none() -> None:
    # 23:00 UTC is 08:00 in Tokyo: outside the window there, inside it in UTC.
    now = _at("UTC", 2026, 6, 1, 23, 0)

    assert decide(_prefs(), _notification(timezone="Asia/Tokyo"), "email", now).outcome == "send"
    assert decide(_prefs(), _notification(), "email", now).outcome == "delay"


def test_an_end_inside_the_spring_forward_gap_resolves_to_the_end_of_the_gap() -> None:
    # Berlin, 2026-03-29: clocks jump from 02:00 to 03:00; 02:30 does not exist that night.
    prefs = _prefs(time(22), time(2, 30), timezone="Europe/Berlin")

    decision = decide(prefs, _notification(), "email", _at("Europe/Berlin", 2026, 3, 29, 1, 0))

    assert decision.until == _at("Europe/Berlin", 2026, 3, 29, 3, 0)
    assert decision.until is not None
    assert decision.until.utcoffset() == timedelta(hours=2)


def test_on_the_fall_back_night_the_first_occurrence_of_the_end_is_used() -> None:
    # New York, 2026-11-01: 01:00-02:00 happens twice; the window ends at the first 01:30.
    prefs = _prefs(time(23), time(1, 30), timezone="America/New_York")
    now = _at("America/New_York", 2026, 11, 1, 0, 30)

    decision = decide(prefs, _notification(), "email", now)

    assert decision.until is not None
    assert decision.until.astimezone(UTC) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


@pytest.mark.parametrize("now", [
    datetime(2026, 11, 1, 6, 15, tzinfo=UTC),  # the second 01:15, as the pipeline passes it
    datetime(2026, 11, 1, 1, 15, fold=1, tzinfo=ZoneInfo("America/New_York")),  # the same
])
def test_in_the_repeated_hour_the_window_ends_at_the_second_reading_of_its_end(
    now: datetime,
) -> None:
    # 23:00-01:30 in New York on 2026-11-01: at the second 01:15 the window has 15 minutes
    # left, not a day and 15 minutes; nor is it over already.
    prefs = _prefs(time(23), time(1, 30), timezone="America/New_York")

    decision = decide(prefs, _notification(), "email", now)

    assert decision.until is not None
    assert decision.until.astimezone(UTC) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        decide(_prefs(), _notification(), "email", datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"opted_out": frozenset({"fax"})}, "unknown channel"),
        ({"channel_order": ("sms", "sms")}, "listed twice"),
        ({"timezone": "Mars/Olympus"}, "IANA"),
        ({"user_id": "u 1"}, "user_id 'u 1': use 1-200 printable characters without spaces"),
        ({"user_id": "u" * 201}, "use 1-200 printable characters"),
        ({"tenant": ""}, "tenant '': use 1-200 printable characters"),
    ],
)
def test_preferences_that_cannot_work_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(PreferencesError, match=message):
        Preferences(**{"user_id": "u1", **fields})


def test_quiet_hours_need_distinct_ends() -> None:
    with pytest.raises(PreferencesError, match="start different from their end"):
        QuietHours(time(7), time(7))


# -- properties ------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "Europe/Lisbon", "America/New_York", "America/Sao_Paulo",
         "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham", "America/St_Johns",
         "Asia/Tehran", "Pacific/Apia", "Africa/Casablanca"]

quarter_hours = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
windows = st.tuples(quarter_hours, quarter_hours).filter(lambda w: w[0] != w[1]).map(
    lambda w: QuietHours(*w)
)
# Instants across several years, so DST transitions in every listed zone are crossed.
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)
).map(lambda naive: naive.replace(tzinfo=UTC))
priorities = st.sampled_from(["high", "normal", "low"])


def _local(instant: datetime, zone: str) -> time:
    return instant.astimezone(ZoneInfo(zone)).time().replace(tzinfo=None)


@settings(max_examples=400, deadline=None)
@given(windows, st.sampled_from(ZONES), instants, priorities)
def test_a_delay_ends_in_the_future_outside_the_window_within_a_day(
    quiet: QuietHours, zone: str, now: datetime, priority: str
) -> None:
    prefs = Preferences(user_id="u1", quiet_hours=quiet, timezone=zone)

    decision = decide(prefs, _notification(priority), "email", now)

    if decision.outcome is Outcome.DELAY:
        assert decision.until is not None
        assert decision.until > now
        assert not quiet.contains(_local(decision.until, zone))
        assert decision.until - now <= timedelta(hours=24, minutes=90)  # 24h + DST slack


@settings(max_examples=400, deadline=None)
@given(windows, st.sampled_from(ZONES), instants, priorities)
def test_inside_quiet_hours_a_non_critical_message_is_never_sent(
    quiet: QuietHours, zone: str, now: datetime, priority: str
) -> None:
    prefs = Preferences(user_id="u1", quiet_hours=quiet, timezone=zone)

    decision = decide(prefs, _notification(priority), "email", now)

    inside = quiet.contains(_local(now, zone))
    assert (decision.outcome is Outcome.DELAY) == inside
    assert (decision.outcome is Outcome.SEND) == (not inside)


@settings(max_examples=200, deadline=None)
@given(windows, st.sampled_from(ZONES), instants)
def test_a_critical_message_is_always_sent(
    quiet: QuietHours, zone: str, now: datetime
) -> None:
    prefs = Preferences(user_id="u1", quiet_hours=quiet, timezone=zone)

    assert decide(prefs, _notification("critical"), "email", now).outcome is Outcome.SEND


@settings(max_examples=200, deadline=None)
@given(windows, st.sampled_from(ZONES), instants)
def test_no_instant_between_now_and_the_delay_end_is_outside_the_window(
    quiet: QuietHours, zone: str, now: datetime
) -> None:
    # The delay is the *first* exit: sampling minutes in between finds none outside.
    decision = decide(Preferences(user_id="u1", quiet_hours=quiet, timezone=zone),
                      _notification(), "email", now)
    if decision.until is None:
        return
    step = (decision.until - now) / 97
    for i in range(1, 97):
        assert quiet.contains(_local(now + step * i, zone))
