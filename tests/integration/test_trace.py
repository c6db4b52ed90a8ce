"""`tidings trace ID`: one notification's story from a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.analytics.trace import UnknownNotification, load_trace
from tidings.direct import DirectPool
from tidings.pipelines.ledger import LedgerWriter, MessageRecord
from tidings.tables import dead_letter_replays, dead_letters

pytestmark = [pytest.mark.postgres]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def _story(engine: AsyncEngine) -> None:
    direct = DirectPool.of(engine)
    try:
        await _write_story(LedgerWriter(direct, max_delay_ms=60_000))
    finally:
        await direct.aclose()


async def _write_story(writer: LedgerWriter) -> None:
    await writer.record_message(MessageRecord(
        "m1", "notifications.intake", {}, priority="high", type="order.shipped",
        tenant="acme", trace_id="t-42", created_at=T0,
    ))
    steps: list[tuple[str, str, float, dict[str, Any]]] = [
        ("email", "failed", 0.150, {"provider": "smtp", "error": "421 busy",
                                    "duration_ms": 40.0}),
        ("email", "sent", 2.5, {"provider": "smtp", "provider_message_id": "<x@mx>",
                                "duration_ms": 35.5}),
        ("sms", "delayed", 0.010, {"error": "quiet hours"}),
    ]
    for channel, state, seconds, fields in steps:
        await writer.record_delivery("m1", channel, f"ada-{channel}", state,
                                     at=T0 + timedelta(seconds=seconds), **fields)
    await writer.aclose()


def _dead_letter(message_id: str | None, headers: dict[str, str], entry: str,
                 at: datetime) -> dict[str, Any]:
    return {
        "topic": "notifications.sms", "partition": 0, "group_name": "senders",
        "stream": "s", "entry_id": entry, "dead_stream": "dead", "dead_entry_id": entry,
        "message_id": message_id, "kind": "exhausted", "error_message": "provider down",
        "fingerprint": "f", "headers": headers, "created_at": at,
    }


async def test_the_story_has_the_message_deliveries_and_events_in_time_order(
    engine: AsyncEngine,
) -> None:
    await _story(engine)

    trace = await load_trace(engine, "m1")

    assert trace.message is not None
    assert (trace.message["type"], trace.message["tenant"], trace.message["priority"]) == (
        "order.shipped", "acme", "high"
    )
    assert [(d["channel"], d["state"], d["attempts"]) for d in trace.deliveries] == [
        ("email", "sent", 2), ("sms", "delayed", 0)
    ]
    assert [(e["state"], e["attempt"], e["error"], trace.ms(e["at"])) for e in trace.events] == [
        ("delayed", None, "quiet hours", 10.0),
        ("failed", 1, "421 busy", 150.0),
        ("sent", 2, None, 2500.0),
    ]
    assert trace.events[2]["provider_message_id"] == "<x@mx>"


async def test_dead_letters_are_found_by_message_id_or_header_with_their_replays(
    engine: AsyncEngine,
) -> None:
    await _story(engine)
    async with engine.begin() as conn:
        ids = (await conn.execute(insert(dead_letters).returning(dead_letters.c.id), [
            _dead_letter("m1", {}, "1-0", T0 + timedelta(seconds=5)),
            _dead_letter(None, {"tidings.message": "m1"}, "2-0", T0 + timedelta(seconds=6)),
            _dead_letter("other", {}, "3-0", T0),
        ])).scalars().all()
        await conn.execute(insert(dead_letter_replays), [{
            "dead_letter_id": ids[0], "replayed_by": "ops", "target_stream": "s",
            "replayed_at": T0 + timedelta(seconds=9),
        }])

    document = (await load_trace(engine, "m1")).to_json()

    assert [(d["id"], d["ms"]) for d in document["dead_letters"]] == [
        (ids[0], 5000.0), (ids[1], 6000.0)
    ]
    assert [(r["dead_letter_id"], r["replayed_by"], r["ms"]) for r in document["replays"]] == [
        (ids[0], "ops", 9000.0)
    ]


async def test_a_dead_letter_without_a_ledger_row_is_still_a_story(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(dead_letters), [_dead_letter("lost", {}, "1-0", T0)])

    trace = await load_trace(engine, "lost")

    assert trace.message is None
    assert [d["kind"] for d in trace.dead_letters] == ["exhausted"]


async def test_an_unknown_id_is_one_clear_error(engine: AsyncEngine) -> None:
    with pytest.raises(UnknownNotification, match="no notification 'nope' in the ledger"):
        await load_trace(engine, "nope")


async def test_the_json_document_carries_times_as_text_and_ms(engine: AsyncEngine) -> None:
    await _story(engine)

    document = (await load_trace(engine, "m1")).to_json()

    assert document["message"]["created_at"] == T0.isoformat()
    assert [e["ms"] for e in document["events"]] == [10.0, 150.0, 2500.0]
    assert document["events"][1]["duration_ms"] == 40.0
