"""One dead-stream entry turned into a ``dead_letters`` row, with its error fingerprint.

Any bytes must turn into a row: an entry dead-lettered as undecodable may carry garbage, and a
row that cannot be written would block its stream's recording for good.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.database import storable
from tidings.errors import PayloadError
from tidings.message import ERRORS_HEADER, HEADER_FIELD, MAX_MS, PAYLOAD_FIELD, Envelope
from tidings.tables.dead_letters import DEAD_KINDS

# Order matters: a uuid or an e-mail holds hex runs and numbers of its own.
_PLACEHOLDERS = (
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    # Tried only where a run of address characters starts: from every position inside a long
    # run the match would scan to its end again.
    (re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


_NORMALISED = 2_000


def normalise(message: str) -> str:
    """The error message with its variable parts (ids, numbers, addresses) as placeholders."""
    # Its start is enough to group by, and the patterns backtrack: the whole of a long reason
    # (a handler's exception with a blob in it) froze the event loop for seconds.
    message = message[:_NORMALISED]
    for pattern, placeholder in _PLACEHOLDERS:
        message = pattern.sub(placeholder, message)
    return " ".join(message.split())[:500]


def fingerprint(topic: str, group: str, kind: str, error_type: str | None, message: str) -> str:
    """Equal for failures that differ only in ids and numbers, so they group together."""
    parts = (topic, group, kind, error_type or "", normalise(message))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    raw = fields.get(name)
    return None if raw is None else storable(raw.decode("utf-8", "replace"))


_INT_MAX = 2**31 - 1  # an integer column


def _int(fields: dict[bytes, bytes], name: bytes, default: int) -> int:
    try:
        return min(max(int(fields[name]), 1), _INT_MAX)
    except (KeyError, ValueError):
        return default


def _ms(fields: dict[bytes, bytes], name: bytes, default: int) -> int:
    """A Unix time in ms (not an integer column: it needs more than 31 bits)."""
    try:
        return min(max(int(fields[name]), 0), MAX_MS)
    except (KeyError, ValueError):
        return default


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(min(max(ms, 0), MAX_MS) / 1000, UTC)


def error_history(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tidings.errors`` header: a JSON list of {attempt, at_ms, type, message}."""
    raw = headers.get(ERRORS_HEADER)
    try:
        items = orjson.loads(raw) if isinstance(raw, str | bytes) else []
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [_failure(i) for i in items if isinstance(i, dict) and isinstance(i.get("at_ms"), int)]


_FAILURE_FIELDS = ("attempt", "at_ms", "type", "message")


def _failure(item: dict[str, Any]) -> dict[str, Any]:
    """One failure of the history, its fields as the consumer writes them; anything else (a
    nested value from a foreign producer) is left out rather than walked."""
    return {k: storable(v) if isinstance(v, str | int | float | bool | None) else None
            for k, v in item.items() if k in _FAILURE_FIELDS}


def read_envelope(raw: bytes | None) -> Envelope | None:
    if raw is None:
        return None
    try:
        return Envelope.from_json(raw)
    except PayloadError:
        return None


def row_of(
    fields: dict[bytes, bytes], topic: str, partition: int, dead_stream: str, dead_id: str,
    now_ms: int,
) -> dict[str, Any]:
    """The ``dead_letters`` row of one dead-stream entry (see the entry contract in consumer.py)."""
    envelope = read_envelope(fields.get(HEADER_FIELD))
    headers: dict[str, Any] = storable(envelope.headers) if envelope else {}
    group = _text(fields, b"dead.group") or "?"
    kind = _text(fields, b"dead.kind") or "invalid"
    reason = _text(fields, b"dead.reason") or ""
    if kind not in DEAD_KINDS:  # from a newer tidings: keep it, under a kind the table knows
        reason = f"[{kind}] {reason}"
        kind = "invalid"
    error_type = _text(fields, b"dead.error_type")
    dead_at = _ms(fields, b"dead.at_ms", now_ms)
    attempts = _int(fields, b"dead.attempts", envelope.attempt if envelope else 1)
    # The header holds the failures that led to retries; the final one is the dead letter's.
    errors = [*error_history(headers),
              {"attempt": attempts, "at_ms": dead_at, "type": error_type, "message": reason}]
    times = [e["at_ms"] for e in errors]
    return {
        "topic": topic,
        "partition": partition,
        "group_name": group,
        "stream": _text(fields, b"dead.stream") or dead_stream,
        "entry_id": _text(fields, b"dead.id") or dead_id,
        "dead_stream": dead_stream,
        "dead_entry_id": dead_id,
        "message_id": storable(envelope.id) if envelope else None,
        "key": storable(envelope.key) if envelope and envelope.key else None,
        "priority": envelope.priority.value if envelope else None,
        "kind": kind,
        "error_type": error_type,
        "error_message": reason,
        "fingerprint": fingerprint(topic, group, kind, error_type, reason),
        "attempts": min(max(attempts, 1), _INT_MAX),
        "deliveries": _int(fields, b"dead.deliveries", 1),
        "envelope": fields.get(HEADER_FIELD),
        "payload": fields.get(PAYLOAD_FIELD),
        "headers": headers,
        "errors": errors,
        "first_failed_at": _at(min(times)),
        "last_failed_at": _at(max(times)),
    }
