"""Delivery events written by the ledger writer with the deliveries, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.direct import DirectPool
from tidings.pipelines.ledger import LedgerError, LedgerWriter, MessageRecord
from tidings.tables import delivery_events

pytestmark = [pytest.mark.postgres]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def writer(engine: AsyncEngine, direct: DirectPool) -> AsyncIterator[LedgerWriter]:
    writer = LedgerWriter(direct, max_delay_ms=60_000)
    await writer.record_message(MessageRecord("m1", "notifications", {}, created_at=T0))
    yield writer
    await writer.aclose()


async def _events(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        query = select(delivery_events).order_by(delivery_events.c.id)
        return list((await conn.execute(query)).all())


async def _record(writer: LedgerWriter, state: Any, seconds: float, **fields: Any) -> None:
    at = T0 + timedelta(seconds=seconds)
    await writer.record_delivery("m1", "email", "ada@example.com", state, at=at, **fields)


@pytest.mark.parametrize("flush_each", [True, False], ids=["flush each", "one batch"])
async def test_every_record_is_an_event_numbered_by_attempt(
    engine: AsyncEngine, writer: LedgerWriter, flush_each: bool
) -> None:
    history: list[tuple[str, dict[str, Any]]] = [
        ("accepted", {}),
        ("failed", {"provider": "smtp", "error": "421 try later", "duration_ms": 12.5}),
        ("failed", {"provider": "smtp", "error": "timeout"}),
        ("sent", {"provider": "smtp", "provider_message_id": "<abc@mx>"}),
        ("failed", {"error": "late duplicate"}),  # ignored by the delivery row, kept as event
    ]
    for i, (state, fields) in enumerate(history):
        await _record(writer, state, i, **fields)
        if flush_each:
            await writer.flush()
    await writer.flush()

    events = await _events(engine)
    assert [(e.state, e.attempt, e.error) for e in events] == [
        ("accepted", None, None),
        ("failed", 1, "421 try later"),
        ("failed", 2, "timeout"),
        ("sent", 3, None),
        ("failed", None, "late duplicate"),
    ]
    assert [e.at for e in events] == [T0 + timedelta(seconds=i) for i in range(5)]
    assert (events[1].duration_ms, events[3].provider_message_id) == (12.5, "<abc@mx>")


async def test_a_given_attempt_number_is_kept(engine: AsyncEngine, writer: LedgerWriter) -> None:
    await _record(writer, "failed", 0, attempt=4, error="busy")
    await writer.flush()

    [event] = await _events(engine)
    assert event.attempt == 4


async def test_an_attempt_below_one_is_refused(writer: LedgerWriter) -> None:
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        await _record(writer, "failed", 0, attempt=0)


async def test_a_rejected_delivery_drops_its_events_and_keeps_the_others(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await _record(writer, "sent", 1)
    await writer.record_delivery("no-such-message", "sms", "+14155550123", "failed")

    with pytest.raises(LedgerError, match="the database rejected 1 ledger row"):
        await writer.flush()

    assert [(e.message_id, e.state) for e in await _events(engine)] == [("m1", "sent")]


async def test_events_stay_buffered_with_their_delivery_while_the_database_is_away(
    schema_name: str,
) -> None:
    away = DirectPool("postgresql://postgres@127.0.0.1:1/test", schema=schema_name, size=1,
                      connect_timeout=1)
    writer = LedgerWriter(away, retries=0, max_delay_ms=60_000)
    try:
        await writer.record_delivery("m1", "email", "a@example.com", "failed")
        await writer.record_delivery("m1", "email", "a@example.com", "sent")
        with pytest.raises(LedgerError, match="stay buffered"):
            await writer.flush()
        await writer.record_delivery("m1", "email", "a@example.com", "failed")

        # The unanswered write is kept whole (to be written again under its flush id) ahead
        # of the record that came after it.
        key = ("m1", "email", "a@example.com")
        [unit] = writer._uncertain
        assert [(e.state, e.seq) for e in unit.deliveries[key].events] == [
            ("failed", 1), ("sent", 2)
        ]
        assert [(e.state, e.seq) for e in writer._deliveries[key].events] == [("failed", 1)]
        assert writer.pending == 2
    finally:
        await away.aclose()
