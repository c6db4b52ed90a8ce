"""Retention: rows older than the cutoff deleted in batches, the rest kept, on a real
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.analytics.report import truncate
from tidings.analytics.retention import Removed, Retention, apply_retention
from tidings.direct import DirectPool
from tidings.pipelines.ledger import LedgerWriter, MessageRecord
from tidings.tables import delivery_stats_day, delivery_stats_hour, delivery_stats_minute

pytestmark = [pytest.mark.postgres]
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
TABLES = {"minute": delivery_stats_minute, "hour": delivery_stats_hour,
          "day": delivery_stats_day}
UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


async def _ids(engine: AsyncEngine, query: str) -> list[str]:
    async with engine.connect() as conn:
        return sorted(str(v) for v in (await conn.execute(text(query))).scalars())


async def _messages(engine: AsyncEngine, ages: dict[str, timedelta]) -> None:
    direct = DirectPool.of(engine)
    writer = LedgerWriter(direct, max_delay_ms=60_000)
    try:
        for name, age in ages.items():
            accepted = NOW - age
            await writer.record_message(MessageRecord(name, "t", {}, created_at=accepted))
            for state in ("failed", "sent"):
                await writer.record_delivery(name, "email", "a@example.com", state,
                                             at=accepted)
        await writer.aclose()
    finally:
        await direct.aclose()


async def test_ledger_rows_older_than_the_cutoff_go_with_their_deliveries_and_events(
    engine: AsyncEngine,
) -> None:
    day = timedelta(days=1)
    await _messages(engine, {"old": 31 * day, "edge": 30 * day + timedelta(seconds=1),
                             "kept": 30 * day - timedelta(seconds=1), "new": day})

    removed = await apply_retention(engine, Retention(ledger_days=30, minute_days=0,
                                                      hour_days=0), NOW)

    assert (removed.messages, removed.deliveries, removed.events) == (2, 2, 4)
    assert await _ids(engine, "SELECT id FROM messages") == ["kept", "new"]
    assert await _ids(engine, "SELECT DISTINCT message_id FROM deliveries") == ["kept", "new"]
    assert await _ids(engine, "SELECT DISTINCT message_id FROM delivery_events") == [
        "kept", "new"
    ]


async def test_a_message_whose_story_goes_on_is_kept_past_the_cutoff(
    engine: AsyncEngine,
) -> None:
    old = NOW - timedelta(days=31)
    direct = DirectPool.of(engine)
    writer = LedgerWriter(direct, max_delay_ms=60_000)
    try:
        for name in ("waiting", "retried", "done"):
            await writer.record_message(MessageRecord(name, "t", {}, created_at=old))
        await writer.record_delivery("waiting", "email", "a@example.com", "sent", at=old)
        await writer.record_delivery("waiting", "sms", "+15550100", "delayed", at=old)
        await writer.record_delivery("retried", "email", "a@example.com", "failed",
                                     at=NOW - timedelta(days=2))
        await writer.record_delivery("done", "email", "a@example.com", "sent", at=old)
        await writer.aclose()
    finally:
        await direct.aclose()

    removed = await apply_retention(engine, Retention(ledger_days=30), NOW)

    assert removed.messages == 1
    assert await _ids(engine, "SELECT id FROM messages") == ["retried", "waiting"]
    assert await _ids(engine, "SELECT DISTINCT message_id FROM deliveries") == [
        "retried", "waiting"
    ]


async def test_deleting_in_small_batches_deletes_the_same_rows(engine: AsyncEngine) -> None:
    await _messages(engine, {f"m{i:02}": timedelta(days=40 + i) for i in range(11)}
                    | {"new": timedelta(days=1)})

    removed = await apply_retention(engine, Retention(ledger_days=30, batch=3), NOW)

    assert removed.messages == 11
    assert await _ids(engine, "SELECT id FROM messages") == ["new"]


async def test_a_roll_up_row_goes_once_its_whole_bucket_is_past_the_cutoff(
    engine: AsyncEngine,
) -> None:
    now = NOW - timedelta(seconds=30)  # cutoffs fall inside a minute, hour and day
    retention = Retention(ledger_days=0, minute_days=7, hour_days=90, day_days=400, batch=1)
    kept: dict[str, list[datetime]] = {}
    async with engine.begin() as conn:
        for level, table in TABLES.items():
            days = getattr(retention, f"{level}_days")
            inside = truncate(now - timedelta(days=days), level)  # holds the cutoff: stays
            buckets = [inside + n * UNITS[level] for n in (-2, -1, 0, 1)]
            await conn.execute(insert(table), [
                {"bucket": b, "channel": "email", "outcome": "sent", "count": 1}
                for b in buckets
            ])
            kept[level] = buckets[2:]

    removed = await apply_retention(engine, retention, now)

    assert removed == Removed(minute=2, hour=2, day=2)
    for level in TABLES:
        async with engine.connect() as conn:
            rows = await conn.execute(text(f"SELECT bucket FROM delivery_stats_{level}"))
            assert sorted(rows.scalars()) == kept[level], level


async def test_zero_days_keeps_everything(engine: AsyncEngine) -> None:
    await _messages(engine, {"ancient": timedelta(days=3000)})

    removed = await apply_retention(engine, Retention(0, 0, 0, 0), NOW)

    assert removed.total == 0
    assert await _ids(engine, "SELECT id FROM messages") == ["ancient"]


async def test_flush_ids_older_than_a_day_are_deleted_and_recent_ones_kept(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        for flush, age in (("gone", timedelta(days=1, seconds=1)), ("live", timedelta(hours=23))):
            await conn.execute(text("INSERT INTO ledger_flushes (id, written_at) VALUES "
                                    "(:id, :at)"), {"id": flush, "at": NOW - age})

    removed = await apply_retention(engine, Retention(ledger_days=0, minute_days=0,
                                                      hour_days=0), NOW)

    assert removed == Removed(flushes=1)
    assert await _ids(engine, "SELECT id FROM ledger_flushes") == ["live"]
