"""`tidings demo` end to end against real Redis and PostgreSQL, with a small count."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from rich.console import Console
from sqlalchemy import text

from tidings.bench.running import drop_keys
from tidings.database import create_engine, quote_ident
from tidings.demo import DEAD_KINDS, NOT_FINAL, STATES, demo_command, run_demo
from tidings.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

COUNT = 300


async def _query(database_url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(database_url, schema="public", pool_size=1, connect_timeout=5)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture
async def kept(redis_url: str, database_url: str, namespace: str,
               schema_name: str) -> AsyncIterator[dict[str, Any]]:
    """A demo run whose keys and schema are kept for the test to read, then removed."""
    settings = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                        database_schema=schema_name)
    summary = await run_demo(settings, COUNT, timeout_s=120, keep=True)
    try:
        yield summary
    finally:
        client = Redis.from_url(redis_url)
        try:
            await drop_keys(client, summary["namespace"])
        finally:
            await client.aclose()
        await _query(database_url, f"DROP SCHEMA IF EXISTS {quote_ident(summary['schema'])}"
                                   " CASCADE")


async def test_every_notification_reaches_a_final_state(kept: dict[str, Any]) -> None:
    assert kept["ledger_messages"] == COUNT
    assert kept["unfinished"] == 0
    assert kept["total"]["not_final"] == 0


async def test_no_delivery_is_left_accepted_sending_or_failed(
    kept: dict[str, Any], database_url: str
) -> None:
    schema = quote_ident(kept["schema"])
    rows = await _query(database_url, f"SELECT state, count(*) FROM {schema}.deliveries"
                                      " WHERE state = ANY(:states) GROUP BY state",
                        states=list(NOT_FINAL))
    assert rows == []


async def test_injected_faults_end_as_retries_and_dead_letters(kept: dict[str, Any]) -> None:
    assert sum(f["injected"] for f in kept["faults"]) > 0
    assert kept["total"]["retried"] > 0
    assert kept["total"]["dead"] > 0
    assert kept["dead_lettered"] > 0
    assert kept["dead_letters"]["exhausted"] == 0, "an injected fault strikes a leg once"


async def test_the_summary_equals_the_ledger(kept: dict[str, Any], database_url: str) -> None:
    schema = quote_ident(kept["schema"])
    rows = await _query(database_url, (
        f"SELECT channel, state, count(*), count(*) FILTER (WHERE attempts > 1)"
        f" FROM {schema}.deliveries GROUP BY channel, state"))
    ledger = {(channel, state): int(n) for channel, state, n, _ in rows}
    retried = Counter[str]()
    for channel, _, _, n in rows:
        retried[channel] += int(n)
    for channel, row in kept["channels"].items():
        for state in STATES:
            assert row[state] == ledger.get((channel, state), 0), (channel, state)
        assert row["retried"] == retried[channel], channel
    for column in (*STATES, "retried"):
        assert kept["total"][column] == sum(c[column] for c in kept["channels"].values())


async def test_dead_letters_in_redis_equal_the_summary(
    kept: dict[str, Any], redis_url: str
) -> None:
    client = Redis.from_url(redis_url)
    try:
        kinds = Counter[str]()
        async for key in client.scan_iter(match=f"{kept['namespace']}:*:dead"):
            for _, fields in await client.xrange(key):
                kinds[fields[b"dead.kind"].decode()] += 1
    finally:
        await client.aclose()
    assert {k: kinds[k] for k in DEAD_KINDS} == kept["dead_letters"]
    assert sum(kinds.values()) == kept["dead_lettered"]


async def test_every_message_of_the_run_is_in_the_ledger(
    kept: dict[str, Any], database_url: str
) -> None:
    schema = quote_ident(kept["schema"])
    [(messages, without_delivery)] = await _query(database_url, (
        f"SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {schema}.deliveries"
        f" d WHERE d.message_id = m.id)) FROM {schema}.messages m"))
    assert (messages, without_delivery) == (COUNT, 0)


async def test_every_outcome_appears_with_readable_failures(kept: dict[str, Any]) -> None:
    assert all(kept["total"][state] > 0 for state in STATES), kept["total"]
    assert kept["total"]["latency_p99_ms"] >= kept["total"]["latency_p50_ms"] > 0
    reasons = " ".join(f["reason"] for f in kept["failures"])
    assert "is undefined" in reasons  # a template that fails to render on its data


async def test_the_demo_command_succeeds_with_dead_letters_and_prints_json(
    redis_url: str, database_url: str, namespace: str, schema_name: str
) -> None:
    settings = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                        database_schema=schema_name)
    out, err = io.StringIO(), io.StringIO()

    await demo_command(settings, 50, True, False, Console(file=out), Console(file=err))

    summary = orjson.loads(out.getvalue())
    assert summary["notifications"] == 50
    assert summary["unfinished"] == 0


async def test_the_demo_leaves_no_key_and_no_schema_behind(
    redis_url: str, database_url: str, namespace: str, schema_name: str
) -> None:
    settings = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                        database_schema=schema_name)
    summary = await run_demo(settings, 50, timeout_s=120)

    assert summary["unfinished"] == 0
    client = Redis.from_url(redis_url)
    try:
        assert [k async for k in client.scan_iter(match=f"{namespace}*")] == []
    finally:
        await client.aclose()
    found = await _query(database_url, "SELECT schema_name FROM information_schema.schemata"
                                       " WHERE schema_name LIKE :prefix", prefix=f"{schema_name}%")
    assert found == []
