"""Roll-ups of delivery events per minute, hour and day, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.analytics.histogram import bucket_of
from tidings.analytics.rollup import RollUp
from tidings.analytics.rollup import roll_up as roll_up_settled
from tidings.database import create_engine
from tidings.direct import DirectPool
from tidings.pipelines.ledger import LedgerWriter, MessageRecord

pytestmark = [pytest.mark.postgres]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _later() -> datetime:
    """A roll-up time after every event written so far."""
    return datetime.now(UTC) + timedelta(minutes=5)


async def roll_up(engine: AsyncEngine, now: datetime) -> RollUp:
    # Nothing writes while a test rolls up: no need to wait for transactions to settle.
    return await roll_up_settled(engine, now, settle=timedelta(0))


@pytest.fixture
async def writer(engine: AsyncEngine, direct: DirectPool) -> AsyncIterator[LedgerWriter]:
    writer = LedgerWriter(direct, max_delay_ms=60_000)
    for i, (tenant, kind) in enumerate([("acme", "order.shipped"), ("zeta", "promo")]):
        record = MessageRecord(f"m{i + 1}", "notifications.intake", {}, tenant=tenant, type=kind,
                               created_at=T0)
        await writer.record_message(record)
    yield writer
    await writer.aclose()


async def _record(writer: LedgerWriter, message: str, state: Any, seconds: float,
                  channel: str = "email", **fields: Any) -> None:
    at = T0 + timedelta(seconds=seconds)
    await writer.record_delivery(message, channel, f"{message}@example.com", state, at=at,
                                 **fields)


async def _stats(engine: AsyncEngine, level: str) -> dict[tuple[Any, ...], Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT * FROM delivery_stats_{level}"))
        return {(r.bucket, r.queue, r.channel, r.provider, r.tenant, r.type, r.outcome): r
                for r in rows}


def _counts(stats: dict[tuple[Any, ...], Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key, row in stats.items():
        counts[key[-1]] = counts.get(key[-1], 0) + row.count
    return counts


async def test_each_event_counts_once_under_its_outcome_at_every_level(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for i, state in enumerate(["accepted", "sending", "sent", "failed", "filtered", "delayed",
                               "dead"]):
        await _record(writer, "m1", state, 0, channel=f"c{i}")
    await writer.flush()

    done = await roll_up(engine, _later())

    expected = {"sent": 1, "failed": 1, "filtered": 1, "delayed": 1, "dead": 1}
    for level in ("minute", "hour", "day"):
        assert _counts(await _stats(engine, level)) == expected, level
    assert done.windows == 1


async def test_rows_carry_the_dimensions_of_the_event_and_its_message(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _record(writer, "m1", "sent", 61, provider="smtp")
    await _record(writer, "m2", "sent", 61, channel="custom", provider="hook")
    await writer.flush()

    await roll_up(engine, _later())

    minute = T0 + timedelta(minutes=1)
    assert set(await _stats(engine, "minute")) == {
        (minute, "notifications.email", "email", "smtp", "acme", "order.shipped", "sent"),
        (minute, "notifications.intake", "custom", "hook", "zeta", "promo", "sent"),
    }
    assert {key[0] for key in await _stats(engine, "hour")} == {T0}


async def test_a_second_roll_up_counts_nothing_again(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _record(writer, "m1", "sent", 0)
    await writer.flush()
    now = _later()
    await roll_up(engine, now)

    again = await roll_up(engine, now)

    assert again.rows == 0
    assert _counts(await _stats(engine, "minute")) == {"sent": 1}


async def test_events_recorded_after_the_window_wait_for_the_next_roll_up(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await roll_up(engine, _later())  # the watermark is now past every event written so far
    await _record(writer, "m1", "sent", 0)
    await writer.flush()
    assert _counts(await _stats(engine, "minute")) == {}

    await roll_up(engine, _later() + timedelta(minutes=1))

    assert _counts(await _stats(engine, "minute")) == {"sent": 1}


async def test_an_event_written_late_lands_in_its_own_minute(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _record(writer, "m1", "sent", 5)
    await writer.flush()
    await roll_up(engine, _later())
    await _record(writer, "m2", "sent", 10)  # happened at the same minute, written afterwards
    await writer.flush()

    await roll_up(engine, _later() + timedelta(minutes=1))

    assert [(key[0], row.count) for key, row in (await _stats(engine, "minute")).items()] == [
        (T0, 1), (T0, 1)
    ]
    assert _counts(await _stats(engine, "day")) == {"sent": 2}


async def test_a_failed_attempt_followed_by_another_counts_as_retried(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for seconds, state in [(1, "failed"), (2, "failed"), (3, "sent")]:
        await _record(writer, "m1", state, seconds)
    await _record(writer, "m2", "failed", 1)
    await _record(writer, "m2", "dead", 2)  # given up: no retry
    await writer.flush()

    await roll_up(engine, _later())

    assert _counts(await _stats(engine, "minute")) == {
        "failed": 3, "sent": 1, "retried": 2, "dead": 1
    }


async def test_latency_is_summed_maxed_and_counted_in_its_bucket(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for message, seconds in [("m1", 0.12), ("m2", 0.75)]:
        await _record(writer, message, "sent", seconds)
    await writer.flush()

    await roll_up(engine, _later())

    [row] = [r for r in (await _stats(engine, "hour")).values() if r.tenant == "acme"]
    assert (row.count, row.latency_ms_sum, row.latency_ms_max) == (1, 120, 120)
    assert row.latency_ms_buckets[bucket_of(120)] == 1
    assert sum(row.latency_ms_buckets) == 1


async def test_merged_rows_add_their_latency_histograms(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _record(writer, "m1", "sent", 0.12)
    await writer.flush()
    await roll_up(engine, _later())
    await _record(writer, "m2", "sent", 30)  # other tenant: another row
    await writer.record_message(MessageRecord("m3", "notifications.intake", {}, tenant="acme",
                                              type="order.shipped", created_at=T0))
    await _record(writer, "m3", "sent", 2)
    await writer.flush()

    await roll_up(engine, _later() + timedelta(minutes=1))

    [row] = [r for r in (await _stats(engine, "day")).values() if r.tenant == "acme"]
    assert (row.count, row.latency_ms_sum, row.latency_ms_max) == (2, 2120, 2000)
    assert row.latency_ms_buckets[bucket_of(120)] == 1
    assert row.latency_ms_buckets[bucket_of(2000)] == 1


async def test_two_roll_ups_at_once_count_every_event_once(
    engine: AsyncEngine, writer: LedgerWriter, database_url: str, schema_name: str
) -> None:
    for i in range(50):
        await _record(writer, "m1" if i % 2 else "m2", "sent", i * 7, channel=f"c{i}")
    await writer.flush()
    other = create_engine(database_url, schema=schema_name, pool_size=2, connect_timeout=5)
    try:
        now = _later()
        results = await asyncio.gather(roll_up(engine, now), roll_up(other, now))
    finally:
        await other.dispose()

    assert sum(r.rows for r in results) == 50 * 3  # one row per channel and level
    for level in ("minute", "hour", "day"):
        assert _counts(await _stats(engine, level)) == {"sent": 50}
