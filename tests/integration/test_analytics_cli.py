"""`tidings report`, `tidings trace` and `tidings maintain` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tidings.cli import cli
from tidings.database import create_engine, quote_ident
from tidings.direct import DirectPool
from tidings.migrate import upgrade
from tidings.pipelines.ledger import LedgerWriter, MessageRecord

pytestmark = [pytest.mark.postgres]
ACCEPTED = datetime.now(UTC) - timedelta(minutes=10)
# Brackets as a provider's reply may hold them: printed as they are, never read as markup.
ERROR = "550 no such user [/] [red]<bob@example.com>"


async def _seed(database_url: str, schema: str) -> None:
    engine = create_engine(database_url, schema=schema, pool_size=1, connect_timeout=5)
    try:
        await upgrade(engine, schema)
        direct = DirectPool.of(engine)
        writer = LedgerWriter(direct)
        for i, state in enumerate(["sent", "sent", "failed"]):
            await writer.record_message(MessageRecord(f"m{i}", "notifications.intake", {},
                                                      type="welcome", created_at=ACCEPTED))
            await writer.record_delivery(
                f"m{i}", "email", "ada@example.com", state, provider="smtp",
                error=ERROR if state == "failed" else None,
                at=ACCEPTED + timedelta(milliseconds=300), duration_ms=20,
            )
        await writer.aclose()
        await direct.aclose()
    finally:
        await engine.dispose()


async def _drop(database_url: str, schema: str) -> None:
    engine = create_engine(database_url, schema=schema, pool_size=1, connect_timeout=5)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
def env(database_url: str, redis_url: str, schema_name: str) -> Iterator[dict[str, str]]:
    asyncio.run(_seed(database_url, schema_name))
    yield {"TIDINGS_DATABASE_URL": database_url, "TIDINGS_REDIS_URL": redis_url,
           "TIDINGS_DATABASE_SCHEMA": schema_name, "COLUMNS": "200"}
    asyncio.run(_drop(database_url, schema_name))


def tidings(env: dict[str, str], *args: str, ok: bool = True, **more: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env | more)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_report_json_counts_the_ledger(env: dict[str, str]) -> None:
    document = json.loads(tidings(env, "report", "--since", "1h", "--json"))

    assert (document["total"]["sent"], document["total"]["failed"]) == (2, 1)
    assert document["rows"]["email"]["success_rate"] == pytest.approx(2 / 3)
    assert document["failures"] == [{"error": ERROR, "count": 1}]


def test_report_prints_tables(env: dict[str, str]) -> None:
    output = tidings(env, "report", "--by", "type")

    assert "deliveries by type" in output
    assert "welcome" in output
    assert ERROR in output


def test_report_html_is_one_self_contained_page_with_charts(
    env: dict[str, str], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"

    tidings(env, "report", "--html", str(page))

    html = page.read_text()
    assert html.startswith("<!doctype html>")
    assert html.count("<svg") >= 3
    assert "<script" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["report", "--by", "colour"], "--by 'colour' is not one of channel, provider"),
        (["report", "--since", "yesterday"], "--since 'yesterday' is not a duration"),
        (["trace", "nope"], "no notification 'nope' in the ledger or the dead letters"),
        (["trace", "[/]"], "no notification '[/]' in the ledger or the dead letters"),
        (["report", "--by", "[/]"], "--by '[/]' is not one of"),
        (["report", "--html", "/nonexistent/dir/r.html"], "cannot write /nonexistent/dir/r.html"),
    ],
)
def test_a_mistake_is_one_error_line(env: dict[str, str], args: list[str], error: str) -> None:
    output = tidings(env, *args, ok=False)

    assert output.startswith(f"error: {error}")
    assert output.count("\n") == 1


def test_trace_json_tells_the_story(env: dict[str, str]) -> None:
    document = json.loads(tidings(env, "trace", "m2", "--json"))

    assert document["message"]["type"] == "welcome"
    assert [(e["state"], e["attempt"], e["error"], e["ms"]) for e in document["events"]] == [
        ("failed", 1, ERROR, 300.0)
    ]


def test_trace_prints_the_timeline(env: dict[str, str]) -> None:
    output = tidings(env, "trace", "m0")
    failed = tidings(env, "trace", "m2")

    assert ERROR in failed
    assert "accepted" in output
    assert "+300.0 ms" in output
    assert "smtp" in output


def test_maintain_once_rolls_up_and_applies_retention(env: dict[str, str]) -> None:
    output = tidings(env, "maintain", "--once", TIDINGS_RETENTION_LEDGER_DAYS="0.001")

    # The events were written within the settle time: not rolled up yet, but past retention.
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d rolled up 0 window\(s\), 0 row\(s\), up to .+ UTC; removed "
        r"3 messages, 3 deliveries, 3 events, 0/0/0 minute/hour/day rows, 0 stale flush "
        r"ids\n", output
    ), output


def test_maintain_refuses_a_bad_retention(env: dict[str, str]) -> None:
    output = tidings(env, "maintain", "--once", TIDINGS_RETENTION_HOUR_DAYS="-1", ok=False)

    assert output == "error: TIDINGS_RETENTION_HOUR_DAYS must be 0 (keep forever) or more\n"
