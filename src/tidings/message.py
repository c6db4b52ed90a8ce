"""The envelope every message travels in, and its versioned wire format.

A stream entry has two fields: ``e`` (the envelope header, JSON) and ``d`` (the payload, JSON).
The header carries ``"v": 1``; a reader rejects versions it does not know instead of guessing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import orjson

from tidings.errors import PayloadError

WIRE_VERSION = 1
HEADER_FIELD = b"e"
PAYLOAD_FIELD = b"d"
# Headers tidings itself sets on a retried message: its error history (a JSON list of
# {attempt, at_ms, type, message}) and the delay it last waited, in seconds.
ERRORS_HEADER = "tidings.errors"
DELAY_HEADER = "tidings.delay"
SINCE_HEADER = "tidings.failing_since"  # Unix ms of the first failure of this run of attempts
# The ledger message a message belongs to, when that is not its own id (a channel dispatch).
LEDGER_HEADER = "tidings.message"
# Set on a message replayed from the dead letters: the id of its replay's audit row.
REPLAY_HEADER = "tidings.replay"

T = TypeVar("T")


class Priority(StrEnum):
    """Priority lanes; each lane is its own stream so a flood in one never blocks another."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


# A message id is in primary keys and unique indexes of the ledger and the dead letters, next
# to an address of up to 2 048 bytes: an id from a foreign producer must stay short enough
# for every index entry to fit PostgreSQL's 2 704 bytes, or one entry would fail the statement
# writing its whole batch (or block the dead-letter recorder for good).
MAX_ID = 64
# The end of year 9999, as far as a datetime goes: a time in ms past it (a foreign producer
# writing microseconds, a delay of "forever") is refused or clamped, never a crash later.
MAX_MS = 253_402_300_799_000
MAX_ATTEMPT = 1_000_000
LANES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_PRIORITIES = {p.value: p for p in Priority}


def new_id() -> str:
    """A time-ordered unique id: 48 bits of milliseconds, then 80 random bits, as 32 hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def new_ids(count: int, now: int) -> list[str]:
    """``count`` ids sharing one timestamp, from one random read (cheaper than one each)."""
    prefix = f"{now:012x}"
    noise = os.urandom(10 * count).hex()
    return [prefix + noise[i : i + 20] for i in range(0, 20 * count, 20)]


def now_ms() -> int:
    return int(time.time() * 1000)


def last_delay(headers: dict[str, str]) -> float | None:
    """The delay (seconds) a retried message last waited, if its header says (and parses)."""
    raw = headers.get(DELAY_HEADER)
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def failing_for(headers: dict[str, str], now: int) -> float:
    """Seconds since this run of attempts first failed (0 if it has not failed before): what a
    retry policy's ``deadline`` counts from. A replay starts a new run."""
    since = headers.get(SINCE_HEADER)
    try:
        return max(0.0, (now - int(since)) / 1000) if since else 0.0
    except ValueError:
        return 0.0


@dataclass(slots=True)
class Envelope:
    """What travels with every payload: identity, routing, priority and timing."""

    id: str
    key: str | None = None
    priority: Priority = Priority.NORMAL
    attempt: int = 1
    created_ms: int = 0
    enqueued_ms: int = 0
    trace_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        if not _text_to_text(self.headers):
            # Refused here, where the producer sees it: a consumer would refuse the entry.
            raise PayloadError("message headers map text to text: "
                               + ", ".join(f"{k!r}: {v!r}" for k, v in self.headers.items()
                                           if type(k) is not str or type(v) is not str)[:200])
        try:
            return orjson.dumps(
                {
                    "v": WIRE_VERSION,
                    "id": self.id,
                    "k": self.key,
                    "p": self.priority.value,
                    "a": self.attempt,
                    "c": self.created_ms,
                    "q": self.enqueued_ms,
                    "t": self.trace_id,
                    "h": self.headers,
                }
            )
        except TypeError as exc:  # e.g. a lone surrogate: undecodable bytes from a command line
            raise PayloadError(
                f"the message's key, headers or trace id cannot be encoded: {exc}"
            ) from None

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        try:
            data = orjson.loads(raw)
            version = data["v"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise PayloadError(f"unreadable envelope header: {exc}") from None
        if type(version) is not int or version != WIRE_VERSION:
            raise PayloadError(
                f"envelope version {version!r} is not known to this tidings (knows {WIRE_VERSION});"
                " upgrade the worker"
            )
        try:
            envelope = cls(
                id=data["id"],
                key=data["k"],
                priority=_PRIORITIES[data["p"]],
                attempt=data["a"],
                created_ms=data["c"],
                enqueued_ms=data["q"],
                trace_id=data["t"],
                headers=data["h"],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise PayloadError(f"incomplete envelope header: {exc}") from None
        if not _well_typed(envelope):
            raise PayloadError("envelope header has fields of the wrong type")
        if not 0 < len(envelope.id) <= MAX_ID:
            raise PayloadError(f"envelope id of {len(envelope.id)} characters; an id is 1-{MAX_ID}"
                               " (tidings writes 32 hex digits)")
        if not (0 < envelope.attempt <= MAX_ATTEMPT and 0 <= envelope.created_ms <= MAX_MS
                and 0 <= envelope.enqueued_ms <= MAX_MS):
            raise PayloadError(
                f"envelope numbers out of range: attempt {envelope.attempt} (1-{MAX_ATTEMPT}),"
                f" created {envelope.created_ms} and enqueued {envelope.enqueued_ms} (Unix"
                " milliseconds, up to the year 9999)")
        return envelope


def _well_typed(e: Envelope) -> bool:
    return (
        type(e.id) is str
        and (e.key is None or type(e.key) is str)
        and type(e.attempt) is int
        and type(e.created_ms) is int
        and type(e.enqueued_ms) is int
        and (e.trace_id is None or type(e.trace_id) is str)
        and type(e.headers) is dict
        and _text_to_text(e.headers)
    )


def _text_to_text(headers: dict[Any, Any]) -> bool:
    """Headers map text to text, as producers give them: nothing nested (the dead-letter
    recorder walks what it stores, and a header nested a thousand deep failed it every try)."""
    return all(type(k) is str and type(v) is str for k, v in headers.items())


def encode(envelope: Envelope, payload: bytes) -> dict[bytes, bytes]:
    """Stream entry fields for one message."""
    return {HEADER_FIELD: envelope.to_json(), PAYLOAD_FIELD: payload}


@dataclass(slots=True)
class Message(Generic[T]):
    """One delivered message as a handler sees it: the decoded value and its envelope."""

    value: T
    envelope: Envelope
    stream_id: str
    partition: int
    deliveries: int = 1

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def key(self) -> str | None:
        return self.envelope.key

    @property
    def priority(self) -> Priority:
        return self.envelope.priority

    @property
    def headers(self) -> dict[str, str]:
        return self.envelope.headers


def dumps(value: Any) -> bytes:
    """JSON for a payload that is not a pydantic model (dicts, lists, scalars)."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise PayloadError(f"payload is not JSON-serialisable: {exc}") from None
