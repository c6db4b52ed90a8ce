"""`tidings schedules …` against real PostgreSQL: tables, --json, one-line errors, preview."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tidings.cli import cli

pytestmark = [pytest.mark.postgres]


def tidings(env: dict[str, str], *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, ["schedules", *args], env=env)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_add_list_show_as_json(env: dict[str, str]) -> None:
    added = json.loads(tidings(
        env, "add", "standup", "--cron", "0 9 * * 1-5", "--tz", "Europe/London",
        "--topic", "reminders", "--payload", '{"text": "stand up"}', "--key", "team-1", "--json",
    ))
    listed = json.loads(tidings(env, "list", "--json"))
    shown = json.loads(tidings(env, "show", "standup", "--json"))

    assert added["state"] == "active"
    assert added["timezone"] == "Europe/London"
    assert [s["name"] for s in listed] == ["standup"]
    assert shown["payload"] == {"text": "stand up"}
    assert shown["fires"] == []


def test_the_table_shows_the_next_fire_in_the_schedules_zone(env: dict[str, str]) -> None:
    tidings(env, "add", "nightly", "--cron", "30 2 * * *", "--tz", "Australia/Sydney",
            "--topic", "reports")
    table = tidings(env, "list")
    assert "nightly" in table
    assert "Australia/Sydney" in table
    assert "02:30:00+1" in table


def test_update_pause_resume_cancel(env: dict[str, str]) -> None:
    tidings(env, "add", "digest", "--cron", "0 8 * * *", "--topic", "mail")
    updated = json.loads(tidings(env, "update", "digest", "--tz", "America/New_York", "--json"))
    states = [
        json.loads(tidings(env, verb, "digest", "--json"))["state"]
        for verb in ("pause", "resume", "cancel")
    ]

    assert updated["timezone"] == "America/New_York"
    assert updated["next_fire_at"].endswith(("T13:00:00+00:00", "T12:00:00+00:00"))
    assert states == ["paused", "active", "cancelled"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "--cron", "0 25 * * *", "--topic", "t"], "invalid cron expression '0 25"),
        (["add", "x", "--cron", "* * *", "--topic", "t"], "has 3 fields"),
        (["add", "x", "--cron", "0 9 * * *", "--tz", "Europe/Lundon", "--topic", "t"],
         "unknown time zone 'Europe/Lundon'"),
        (["add", "x", "--every", "5 min", "--topic", "t"], "is not a duration"),
        (["add", "x", "--cron", "* * * * *", "--every", "1m", "--topic", "t"], "exactly one of"),
        (["show", "ghost"], "no schedule named 'ghost'"),
        (["add", "x", "--every", "1000000w", "--topic", "t"], "longer than 36500 days"),
        (["add", "x", "--at", "9999-12-31T23:00", "--tz", "America/New_York", "--topic", "t"],
         "not between 1970-01-01 and 9000-01-01"),
        (["add", "x", "--at", "1969-07-20T20:17", "--topic", "t"], "not between"),
        (["add", "x", "--every", "1h", "--topic", "t", "--payload", '{"a": "\\u0000"}'],
         "NUL character"),
        (["add", "x", "--every", "1h", "--topic", "t", "--max-runs", "3000000000"],
         "max_runs must be 1 to"),
        (["purge", "--older-than", "1000000w"], "longer than 36500 days"),
    ],
)
def test_mistakes_are_one_clear_line(env: dict[str, str], args: list[str], message: str) -> None:
    output = tidings(env, *args, ok=False)
    assert message in output
    assert output.strip().count("\n") == 0, output


def test_preview_prints_iso_times_with_offsets_one_per_line() -> None:
    output = tidings({}, "preview", "--cron", "30 1 * * *", "--tz", "Europe/London",
                     "--from", "2024-03-30T12:00", "--count", "3")
    assert output.splitlines() == [
        "2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00", "2024-04-02T01:30:00+01:00",
    ]
    as_json = tidings({}, "preview", "--cron", "0 0 29 2 *", "--from", "2025-01-01", "--count",
                      "2", "--json")
    assert json.loads(as_json) == ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]


def test_list_says_when_it_shows_only_the_first_schedules(env: dict[str, str]) -> None:
    for name in ("a", "b", "c"):
        tidings(env, "add", name, "--every", "1h", "--topic", "t")
    result = CliRunner().invoke(cli, ["schedules", "list", "--limit", "2", "--json"], env=env)
    assert [s["name"] for s in json.loads(result.stdout)] == ["a", "b"]
    assert "showing the first 2 schedules by name; there are more" in result.stderr


def test_preview_rejects_an_unknown_zone() -> None:
    output = tidings({}, "preview", "--cron", "0 * * * *", "--tz", "Mars/Base", ok=False)
    assert output.strip() == (
        "error: unknown time zone 'Mars/Base': use an IANA name such as 'Europe/London' or 'UTC'"
    )
