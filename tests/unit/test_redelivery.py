"""What a failed message carries on: its next delay, its retried envelope, its dead letter."""

from __future__ import annotations

import orjson

from tidings.batch import RetryRequest
from tidings.message import DELAY_HEADER, ERRORS_HEADER, PAYLOAD_FIELD, Envelope
from tidings.redelivery import KEPT_ERRORS, dead_letter_fields, retried_fields, retry_delay
from tidings.retry import RetryPolicy
from tidings.transport import Entry

ENTRY = Entry("s", b"1-0", {b"e": b"{}", PAYLOAD_FIELD: b'{"n": 1}'}, deliveries=2)
FIXED = RetryPolicy(strategy="fixed", base=2, max_delay=10, max_attempts=3)


def test_a_counted_failure_uses_an_attempt_and_the_last_one_gives_up() -> None:
    request = RetryRequest("boom")

    assert retry_delay(FIXED, Envelope(id="m", attempt=1), request) == 2
    assert retry_delay(FIXED, Envelope(id="m", attempt=3), request) is None


def test_a_wait_uses_no_attempt_and_retried_fields_keep_the_attempt() -> None:
    request = RetryRequest("busy", delay=0.5, count=False)
    envelope = Envelope(id="m", attempt=3)

    assert retry_delay(FIXED, envelope, request) == 0.5
    fields = retried_fields(ENTRY, envelope, request, 0.5)
    retried = Envelope.from_json(fields[b"e"])
    assert retried.attempt == 3
    assert retried.headers[DELAY_HEADER] == "0.500"
    assert fields[PAYLOAD_FIELD] == b'{"n": 1}'


def test_the_error_history_keeps_the_latest_and_survives_a_broken_header() -> None:
    long = [{"attempt": i, "message": f"e{i}"} for i in range(KEPT_ERRORS)]
    envelope = Envelope(id="m", attempt=11, headers={ERRORS_HEADER: orjson.dumps(long).decode()})

    kept = orjson.loads(Envelope.from_json(
        retried_fields(ENTRY, envelope, RetryRequest("late", error_type="Timeout"), 1.0)[b"e"]
    ).headers[ERRORS_HEADER])
    assert len(kept) == KEPT_ERRORS
    assert kept[-1]["message"] == "late"
    assert kept[-1]["type"] == "Timeout"
    assert kept[0]["message"] == "e1"

    broken = Envelope(id="m", headers={ERRORS_HEADER: "not json"})
    reset = orjson.loads(Envelope.from_json(
        retried_fields(ENTRY, broken, RetryRequest("again"), 1.0)[b"e"]).headers[ERRORS_HEADER])
    assert [e["message"] for e in reset] == ["again"]


def test_a_dead_letter_says_why_where_from_and_after_how_many_attempts() -> None:
    fields = dead_letter_fields(ENTRY, "g", "exhausted", "gave up", "Timeout", 3)

    assert fields[PAYLOAD_FIELD] == b'{"n": 1}'
    assert {k: v for k, v in fields.items() if k.startswith(b"dead.") and k != b"dead.at_ms"} == {
        b"dead.kind": b"exhausted", b"dead.reason": b"gave up", b"dead.stream": b"s",
        b"dead.id": b"1-0", b"dead.group": b"g", b"dead.deliveries": b"2",
        b"dead.error_type": b"Timeout", b"dead.attempts": b"3",
    }
    assert b"dead.attempts" not in dead_letter_fields(ENTRY, "g", "invalid", "bad", None, None)
