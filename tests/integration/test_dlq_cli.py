"""`tidings dlq …` against real Redis and PostgreSQL: tables, --json, replays, purges, errors."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import typer
from redis.asyncio import Redis
from sqlalchemy import func, select
from typer.testing import CliRunner

from tidings import keys
from tidings.cli import cli
from tidings.database import create_engine
from tidings.dlq.recorder import DeadLetterRecorder
from tidings.keys import PartitionKeys
from tidings.message import Envelope
from tidings.tables import dead_letter_replays

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

Env = dict[str, str]


def park(env: Env, topic: str, reason: str, *, user: str = "u-1", kind: str = "exhausted",
         error_type: str = "TimeoutError") -> None:
    """XADD one dead-stream entry and record it, as a worker's recorder would."""
    namespace = env["TIDINGS_NAMESPACE"]

    async def main() -> None:
        client = Redis.from_url(env["TIDINGS_REDIS_URL"])
        engine = create_engine(env["TIDINGS_DATABASE_URL"],
                               schema=env["TIDINGS_DATABASE_SCHEMA"], pool_size=1,
                               connect_timeout=5)
        try:
            await client.hsetnx(keys.topic_registry(namespace), topic, 1)
            fields = {b"e": Envelope(f"m-{user}").to_json(),
                      b"d": json.dumps({"recipient": {"user_id": user}}).encode(),
                      b"dead.kind": kind.encode(), b"dead.reason": reason.encode(),
                      b"dead.error_type": error_type.encode(), b"dead.group": b"send"}
            await client.xadd(PartitionKeys(namespace, topic, 0).dead, fields)  # type: ignore[arg-type]
            await DeadLetterRecorder(client, engine, namespace, consumer="t").record_once()
        finally:
            await engine.dispose()
            await client.aclose()

    asyncio.run(main())


def tidings(env: Env, *args: str, ok: bool = True, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, ["dlq", *args], env=env, input=stdin)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def as_json(env: Env, *args: str) -> Any:
    return json.loads(tidings(env, *args, "--json"))


@pytest.fixture
def letters(env: Env) -> Env:
    park(env, "sms", "user 12 timed out after 30s", user="u-1")
    park(env, "sms", "user 345 timed out after 9s", user="u-42")
    park(env, "email", "template welcome missing", kind="permanent", error_type="TemplateError")
    return env


def test_list_shows_the_newest_first_in_a_table(letters: Env) -> None:
    table = tidings(letters, "list")
    assert table.index("template welcome missing") < table.index("user 12 timed out")
    assert "TimeoutError: user 345 timed out after 9s" in table


def test_list_narrows_by_topic_kind_and_filter(letters: Env) -> None:
    assert len(as_json(letters, "list", "--topic", "sms")) == 2
    assert [r["topic"] for r in as_json(letters, "list", "--kind", "permanent")] == ["email"]
    found = as_json(letters, "list", "--filter",
                    "error_type~timeout and payload.recipient.user_id=u-42")
    assert [r["error_message"] for r in found] == ["user 345 timed out after 9s"]


def test_group_by_error_counts_similar_errors_together(letters: Env) -> None:
    groups = as_json(letters, "list", "--group-by", "error")
    assert [(g["count"], g["dead"], g["topics"]) for g in groups] == [
        (2, 2, ["sms"]), (1, 1, ["email"]),
    ]
    assert groups[0]["sample_error"] == "user 345 timed out after 9s"
    assert "TemplateError" in tidings(letters, "list", "--group-by", "error")


def test_show_decodes_the_payload_and_the_error_history(letters: Env) -> None:
    shown = as_json(letters, "show", "1")
    assert shown["payload"] == {"recipient": {"user_id": "u-1"}}
    assert [e["message"] for e in shown["errors"]] == ["user 12 timed out after 30s"]
    assert shown["replay_history"] == []
    assert '"user_id": "u-1"' in tidings(letters, "show", "1")


def test_replay_with_an_edit_is_shown_in_the_letters_history(letters: Env) -> None:
    [done] = as_json(letters, "replay", "2", "--set", "recipient.user_id=u-43", "--by", "bob")
    shown = as_json(letters, "show", "2")

    assert done["stream"].endswith(":{t:sms:0}:retry:send")
    assert shown["state"] == "replayed"
    [audit] = shown["replay_history"]
    assert (audit["replayed_by"], audit["edits"]) == ("bob", {"recipient.user_id": "u-43"})
    assert audit["new_entry_id"] == done["entry_id"]


def test_a_second_replay_fails_on_one_line_unless_forced(letters: Env) -> None:
    tidings(letters, "replay", "1")
    refused = tidings(letters, "replay", "1", ok=False)
    assert "refused" in refused
    assert "add --force" in refused
    assert "Traceback" not in refused
    tidings(letters, "replay", "1", "--force")


def test_replay_all_takes_only_letters_not_yet_replayed(letters: Env) -> None:
    tidings(letters, "replay", "1")
    done = as_json(letters, "replay", "--all")
    assert [r["id"] for r in done] == [2, 3]


def test_a_dry_run_replays_nothing(letters: Env) -> None:
    plans = as_json(letters, "replay", "--filter", "topic=sms", "--dry-run")
    assert [p["id"] for p in plans] == [1, 2]
    assert "dry run" in tidings(letters, "replay", "--all", "--dry-run")
    assert {r["state"] for r in as_json(letters, "list")} == {"dead"}


def test_purge_asks_first_and_keeps_the_replay_audit(letters: Env) -> None:
    tidings(letters, "replay", "1")
    declined = tidings(letters, "purge", "--topic", "sms", stdin="n\n", ok=False)
    purged = tidings(letters, "purge", "--filter", "topic=sms", "--yes")

    assert "nothing purged" in declined
    assert "purged 2 dead letter(s)" in purged
    assert [r["topic"] for r in as_json(letters, "list")] == ["email"]
    assert audit_rows(letters) == 1


def test_purge_deletes_only_the_letters_it_asked_about(
    letters: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def yes_while_another_letter_arrives(text: str, *args: Any, **kwargs: Any) -> bool:
        with ThreadPoolExecutor(1) as pool:  # park() runs an event loop of its own
            pool.submit(park, letters, "sms", "arrived while the prompt was read").result()
        return "Purge 2 dead letter(s)" in text

    monkeypatch.setattr(typer, "confirm", yes_while_another_letter_arrives)
    assert "purged 2 dead letter(s)" in tidings(letters, "purge", "--topic", "sms")
    assert [r["id"] for r in as_json(letters, "list", "--topic", "sms")] == [4]


def test_replay_of_ids_is_narrowed_by_the_other_options(letters: Env) -> None:
    done = as_json(letters, "replay", "1", "3", "--topic", "email")

    assert [r["id"] for r in done] == [3]
    assert as_json(letters, "show", "1")["state"] == "dead", "an sms letter: not replayed"


def test_purge_older_than_spares_recent_letters(letters: Env) -> None:
    assert "nothing purged" in tidings(letters, "purge", "--older-than", "1d", "--yes")
    assert len(as_json(letters, "list", "--since", "1h")) == 3


def test_purge_without_a_selection_is_refused(letters: Env) -> None:
    assert "say which letters" in tidings(letters, "purge", "--yes", ok=False)


def test_a_bad_filter_is_one_line_naming_the_position(letters: Env) -> None:
    output = tidings(letters, "list", "--filter", "kind=poison topic=sms", ok=False)
    assert "position 13 expected 'and' between terms" in output
    assert "Traceback" not in output


def test_an_unknown_id_is_one_line(letters: Env) -> None:
    output = tidings(letters, "show", "999", ok=False)
    assert "no dead letter 999" in output


@pytest.mark.parametrize("args", [
    ["show", "99999999999999999999"], ["list", "--filter", "attempts=3000000000"],
    ["list", "--since", "1000000w"], ["replay", "1", "--set", 'a="\\u0000"'],
])
def test_values_no_column_can_hold_are_one_clear_line(letters: Env, args: list[str]) -> None:
    output = tidings(letters, *args, ok=False)
    assert "Traceback" not in output
    assert any(w in output for w in ("less than", "at most", "longer than", "NUL")), output


@pytest.mark.parametrize("rate", ["1e-300/s", "nan", "0", "1e9/s"])
def test_a_replay_rate_out_of_bounds_is_one_line(letters: Env, rate: str) -> None:
    output = tidings(letters, "replay", "--all", "--rate", rate, ok=False)
    assert "from 0.001 to 1000000" in output
    assert "Traceback" not in output


def audit_rows(env: Env) -> int:
    async def main() -> int:
        engine = create_engine(env["TIDINGS_DATABASE_URL"],
                               schema=env["TIDINGS_DATABASE_SCHEMA"], pool_size=1,
                               connect_timeout=5)
        try:
            async with engine.connect() as conn:
                query = select(func.count()).select_from(dead_letter_replays)
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(main())
