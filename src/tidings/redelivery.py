"""What a failed message carries on: when its next attempt is due, the envelope it is retried
with (attempt, error history), and the fields of its dead letter."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from tidings.batch import RetryRequest
from tidings.message import (
    DELAY_HEADER,
    ERRORS_HEADER,
    PAYLOAD_FIELD,
    SINCE_HEADER,
    Envelope,
    failing_for,
    last_delay,
    now_ms,
)
from tidings.retry import RetryPolicy
from tidings.transport import Entry

# Error history carried in a retried message's headers: the most recent ones.
KEPT_ERRORS = 10


def retry_delay(policy: RetryPolicy, envelope: Envelope, request: RetryRequest) -> float | None:
    """Seconds until the next attempt; None when the policy gives up."""
    elapsed = failing_for(envelope.headers, now_ms())
    if request.count:
        return policy.next_delay(envelope.attempt, elapsed=elapsed,
                                 previous=last_delay(envelope.headers), requested=request.delay)
    # Waiting is not the message's fault: no attempt used up, but the deadline holds.
    delay = request.delay if request.delay is not None else policy.backoff(1)
    if policy.deadline is not None and elapsed + delay > policy.deadline:
        return None
    return delay


def retried_fields(
    entry: Entry, envelope: Envelope, request: RetryRequest, delay: float
) -> dict[bytes, bytes]:
    """The entry's fields for its next attempt: its envelope with the attempt counted (unless
    the request does not count one), the delay and the error history in its headers."""
    now = now_ms()
    errors = _history(envelope.headers.get(ERRORS_HEADER))
    errors.append({"attempt": envelope.attempt, "at_ms": now,
                   "type": request.error_type or "", "message": request.reason[:500]})
    retried = dataclasses.replace(
        envelope,
        attempt=envelope.attempt + 1 if request.count else envelope.attempt,
        enqueued_ms=now,
        headers={SINCE_HEADER: str(now), **envelope.headers,
                 DELAY_HEADER: f"{delay:.3f}",
                 ERRORS_HEADER: orjson.dumps(errors[-KEPT_ERRORS:]).decode()},
    )
    fields = entry.fields or {}
    return {b"e": retried.to_json(), PAYLOAD_FIELD: fields[PAYLOAD_FIELD]}


def dead_letter_fields(
    entry: Entry, group: str, kind: str, reason: str, error_type: str | None,
    attempts: int | None,
) -> dict[bytes, bytes]:
    """The entry's fields, and why, where from and when it went to the dead-letter stream."""
    fields: dict[bytes, bytes] = dict(entry.fields or {})
    fields.update({
        b"dead.kind": kind.encode(),
        b"dead.reason": reason.encode(),
        b"dead.stream": entry.stream.encode(),
        b"dead.id": entry.id,
        b"dead.group": group.encode(),
        b"dead.deliveries": str(entry.deliveries).encode(),
        b"dead.at_ms": str(now_ms()).encode(),
    })
    if error_type:
        fields[b"dead.error_type"] = error_type.encode()
    if attempts is not None:
        fields[b"dead.attempts"] = str(attempts).encode()
    return fields


def _history(raw: str | None) -> list[Any]:
    """The error history a retried message carries; a header that does not parse is reset."""
    if not raw:
        return []
    try:
        errors = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return errors if isinstance(errors, list) else []
