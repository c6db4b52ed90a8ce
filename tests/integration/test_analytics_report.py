"""`tidings report`'s numbers against the ledger they come from, on a real PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.analytics import report as report_module
from tidings.analytics.report import build_report
from tidings.analytics.rollup import roll_up
from tidings.analytics.stats import ENDINGS
from tidings.direct import DirectPool
from tidings.pipelines.ledger import LedgerWriter, MessageRecord

pytestmark = [pytest.mark.postgres]
NOW = datetime.now(UTC)  # real time: roll-ups compare with the database clock


@pytest.fixture
async def writer(engine: AsyncEngine, direct: DirectPool) -> AsyncIterator[LedgerWriter]:
    writer = LedgerWriter(direct, max_batch=200, max_delay_ms=60_000)
    yield writer
    await writer.aclose()


async def _notification(writer: LedgerWriter, message_id: str, accepted: datetime,
                        steps: list[tuple[str, float, dict[str, Any]]], channel: str = "email",
                        tenant: str = "acme", kind: str = "order.shipped") -> None:
    """One message and its delivery steps, each ``seconds`` after acceptance."""
    await writer.record_message(MessageRecord(message_id, "notifications.intake", {},
                                              tenant=tenant, type=kind, created_at=accepted))
    for state, seconds, fields in steps:
        await writer.record_delivery(message_id, channel, "ada@example.com", state,
                                     at=accepted + timedelta(seconds=seconds), **fields)


async def _workload(writer: LedgerWriter, count: int, seed: int, start: datetime) -> None:
    rng = random.Random(seed)
    stories: list[list[tuple[str, float, dict[str, Any]]]] = [
        [("sent", 0.2, {"provider": "smtp"})],
        [("failed", 0.1, {"provider": "smtp", "error": "421 busy"}),
         ("sent", 3, {"provider": "smtp"})],
        [("failed", 0.1, {"error": "invalid number"}), ("dead", 0.2, {"error": "gave up"})],
        [("filtered", 0, {"error": "opted out"})],
        [("delayed", 0, {"error": "quiet hours"})],
        [("accepted", 0, {}), ("sending", 0.05, {}), ("sent", 0.5, {"provider": "twilio"})],
    ]
    for i in range(count):
        accepted = start + timedelta(minutes=rng.uniform(0, 60))
        await _notification(writer, f"m{seed}-{i}", accepted, rng.choice(stories),
                            channel=rng.choice(["email", "sms", "push"]),
                            tenant=rng.choice(["acme", "zeta"]), kind=rng.choice(["a", "b"]))
    await writer.flush()


async def _ledger_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("""
            SELECT state, count(*) FROM delivery_events GROUP BY state
            UNION ALL
            SELECT 'retried', count(*) FROM delivery_events
            WHERE state IN ('sent', 'failed') AND attempt > 1
        """))
        return {state: n for state, n in rows}


async def test_report_totals_equal_the_ledger(engine: AsyncEngine, writer: LedgerWriter) -> None:
    await _workload(writer, 150, seed=1, start=NOW - timedelta(hours=3))
    await roll_up(engine, NOW + timedelta(minutes=5), settle=timedelta(0))
    await _workload(writer, 100, seed=2, start=NOW - timedelta(hours=2))  # not rolled up yet

    report = await build_report(engine, NOW + timedelta(minutes=1), timedelta(hours=6))

    ledger = await _ledger_counts(engine)
    assert {o: report.total.count(o) for o in (*ENDINGS, "retried")} == {
        o: ledger.get(o, 0) for o in (*ENDINGS, "retried")
    }
    async with engine.connect() as conn:
        sent = (await conn.execute(text(
            "SELECT count(*) FROM deliveries WHERE state = 'sent'"))).scalar_one()
    assert report.total.count("sent") == sent  # each sent delivery was sent once


async def test_rows_by_a_dimension_add_up_to_the_total(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _workload(writer, 80, seed=3, start=NOW - timedelta(hours=2))

    report = await build_report(engine, NOW, timedelta(hours=24), by="tenant")

    assert set(report.rows) == {"acme", "zeta"}
    for outcome in (*ENDINGS, "retried"):
        assert sum(s.count(outcome) for s in report.rows.values()) == report.total.count(outcome)
    assert sum(s.count("sent") for s in report.rows.values()) > 0


async def test_the_previous_period_counts_only_the_period_before(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    sent = [("sent", 1, {"provider": "smtp"})]
    await _notification(writer, "now", NOW - timedelta(hours=1), sent)
    await _notification(writer, "before", NOW - timedelta(hours=30), sent)
    await _notification(writer, "long-ago", NOW - timedelta(hours=60), sent)
    await writer.flush()

    report = await build_report(engine, NOW, timedelta(hours=24))

    assert (report.total.total, report.previous.total) == (1, 1)
    [day] = [t for t in report.trends if t.name == "day"]
    assert (day.current.total, day.previous.total, day.change) == (1, 1, 0.0)


async def test_failure_reasons_are_ranked_by_count(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for i, error in enumerate(["421 busy", "421 busy", "invalid number"]):
        await _notification(writer, f"m{i}", NOW - timedelta(minutes=10),
                            [("failed", 1, {"error": error})])
    await writer.flush()

    report = await build_report(engine, NOW, timedelta(hours=1))

    assert report.failures == [("421 busy", 2), ("invalid number", 1)]


async def test_latency_percentiles_come_from_the_acceptance_to_sent_histogram(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for i in range(100):
        seconds = 0.12 if i < 90 else 4.0  # p50: bucket 100-250 ms, p99: 2.5-5 s
        await _notification(writer, f"m{i}", NOW - timedelta(minutes=5),
                            [("sent", seconds, {})])
    await writer.flush()

    total = (await build_report(engine, NOW, timedelta(hours=1))).total

    p50, p99 = total.latency_ms(0.5), total.latency_ms(0.99)
    assert p50 is not None
    assert 100 <= p50 <= 250
    assert p99 is not None
    assert 2_500 <= p99 <= 4_000  # never above the largest latency seen
    assert total.latency_ms_max == 4_000


async def test_peak_hours_and_top_types_rank_by_count(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    hour = NOW.replace(minute=30) - timedelta(hours=3)
    for i in range(3):
        await _notification(writer, f"p{i}", hour, [("sent", 1, {})], kind="promo")
    await _notification(writer, "o", hour - timedelta(hours=1), [("sent", 1, {})], kind="order")
    await writer.flush()

    report = await build_report(engine, NOW, timedelta(hours=24))

    assert report.peak_hours == [(hour.hour, 3), ((hour - timedelta(hours=1)).hour, 1)]
    assert report.top_types == [("promo", 3), ("order", 1)]


async def test_a_long_period_reads_the_hour_roll_ups(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _workload(writer, 20, seed=4, start=NOW - timedelta(days=5))
    await roll_up(engine, NOW + timedelta(minutes=5), settle=timedelta(0))

    report = await build_report(engine, NOW, timedelta(days=7))

    ledger = await _ledger_counts(engine)
    assert report.level == "hour"
    assert report.total.total == sum(ledger.get(o, 0) for o in ENDINGS)


@pytest.mark.parametrize(("since", "level"), [
    (timedelta(days=2), "minute"), (timedelta(days=3), "hour"), (timedelta(days=45), "hour"),
    (timedelta(days=46), "day"),
])
async def test_the_level_read_holds_the_period_before_too_under_default_retention(
    engine: AsyncEngine, since: timedelta, level: str
) -> None:
    # Minutes are kept 7 days and hours 90: twice the period must fit in the level read.
    assert (await build_report(engine, NOW, since)).level == level


async def test_a_roll_up_committed_while_the_report_reads_is_counted_once(
    engine: AsyncEngine, writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await roll_up(engine, NOW + timedelta(minutes=5), settle=timedelta(0))  # a watermark
    await writer.record_message(MessageRecord("m1", "t", {}, created_at=NOW))
    await writer.record_delivery("m1", "email", "a@example.com", "sent", at=NOW, attempt=1)
    await writer.flush()
    read_watermark = report_module.watermark

    async def roll_up_in_between(conn: Any) -> Any:  # as tidings maintain, elsewhere, would
        position = await read_watermark(conn)
        await roll_up(engine, datetime.now(UTC) + timedelta(minutes=5), settle=timedelta(0))
        monkeypatch.setattr(report_module, "watermark", read_watermark)
        return position

    monkeypatch.setattr(report_module, "watermark", roll_up_in_between)
    report = await build_report(engine, datetime.now(UTC) + timedelta(seconds=1),
                                timedelta(hours=1))

    assert report.total.count("sent") == 1
