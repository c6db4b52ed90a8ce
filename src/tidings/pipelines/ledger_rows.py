"""The ledger's rows: message records, the merge rules of a delivery's states, and the SQL
that writes them in one statement per table (see tidings.pipelines.ledger)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, get_args

import orjson
from sqlalchemy.exc import DBAPIError

from tidings.direct import DirectPool, Statement, json_param
from tidings.notification import Notification

DeliveryState = Literal[
    "accepted", "filtered", "delayed", "sending", "sent", "failed", "dead"
]
STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)
FINAL: frozenset[str] = frozenset({"sent", "filtered", "dead"})
COUNTED = frozenset({"sent", "failed"})
_PRIORITIES = frozenset({"high", "normal", "low"})
DeliveryKey = tuple[str, str, str]  # (message_id, channel, recipient)
Claim = tuple[str, str]  # (tenant or '', idempotency key)


class Intent(NamedTuple):
    """A delivery leg to claim, with its token (see pipelines.intents)."""

    message_id: str
    channel: str
    recipient: str
    token: str



@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One ``messages`` row. ``payload`` is JSON-able (or an ``orjson.Fragment`` of JSON
    already encoded); ``priority`` a transport lane."""

    id: str
    topic: str
    payload: Any
    priority: str = "normal"
    type: str | None = None
    tenant: str | None = None
    idempotency_key: str | None = None
    key: str | None = None
    trace_id: str | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.priority not in _PRIORITIES:
            raise ValueError(f"priority {self.priority!r} is not a lane: use high, normal or "
                             "low (critical notifications travel in the high lane)")

    @classmethod
    def from_notification(
        cls, message_id: str, topic: str, notification: Notification, **fields: Any
    ) -> MessageRecord:
        """The ``messages`` row of a notification published as message ``message_id``."""
        return cls(
            # Encoded once, by pydantic; the writer passes the bytes through as they are.
            message_id, topic, orjson.Fragment(notification.model_dump_json()),
            priority=notification.lane.value, type=notification.type,
            tenant=notification.tenant, idempotency_key=notification.idempotency_key, **fields,
        )

    @property
    def claim(self) -> Claim | None:
        """The (tenant, idempotency key) pair this message claims; None without a key."""
        return None if self.idempotency_key is None else (self.tenant or "", self.idempotency_key)


@dataclass(slots=True)
class EventRow:
    """One ``delivery_events`` row: a state change exactly as it was recorded.

    ``seq`` numbers the attempts a batch's merged delivery row counts (1, 2, …; None for a
    record the merge ignored): at the flush it becomes the attempt number, unless ``attempt``
    was given.
    """

    state: str
    attempt: int | None
    provider: str | None
    provider_message_id: str | None
    error: str | None
    duration_ms: float | None
    at: datetime
    seq: int | None


@dataclass(slots=True)
class DeliveryRow:
    """A pending delivery upsert: the merge of every record for its key since the last flush."""

    state: str
    provider: str | None
    provider_message_id: str | None
    attempts: int
    error: str | None
    at: datetime
    sent_at: datetime | None
    last_at: datetime
    events: list[EventRow] = field(default_factory=list)  # every record merged into this row

    def then(self, later: DeliveryRow) -> None:
        """Apply ``later`` after this one, by the rules the upsert applies in the database.

        Its events are kept whatever the rules say: they are the story, not the state.
        """
        for event in later.events:
            if event.seq is not None:
                event.seq = None if self.state in FINAL else event.seq + self.attempts
        self.events.extend(later.events)
        if self.state in FINAL:
            return
        if later.state != "accepted":
            self.state = later.state
        self.attempts += later.attempts
        self.provider = later.provider or self.provider
        self.provider_message_id = later.provider_message_id or self.provider_message_id
        self.error = later.error or self.error
        self.sent_at = self.sent_at or later.sent_at
        self.last_at = max(self.last_at, later.last_at)



# Rows travel as one JSON array per statement (direct.json_param), expanded by json_to_recordset.
_MESSAGE_ROWS = """
SELECT id, topic, key, priority, type, tenant, idempotency_key, payload, trace_id,
       coalesce(created_at, now())
FROM json_to_recordset(CAST(:messages AS json))
     AS m(id text, topic text, key text, priority text, type text, tenant text,
          idempotency_key text, payload jsonb, trace_id text, created_at timestamptz)
"""
_INSERT_MESSAGES = """
INSERT INTO messages (id, topic, key, priority, type, tenant, idempotency_key, payload,
                      trace_id, created_at)
""" + _MESSAGE_ROWS

# Which messages it wrote: the idempotency claims this batch won. With them it claims the
# delivery legs foreseen for each message it wrote — a new message has no delivery rows yet —
# as an intent claim would (see pipelines.intents): 'sending', with the leg's token. The legs
# come as one JSON array of [message_id, channel, recipient, token]; a row per message written
# (channel NULL) and per leg claimed comes back. (Run again, it finds its own rows and claims no
# leg: safe to repeat, as the caller keeps the legs' tokens.)
CLAIM = Statement.parse("""
WITH written AS (""" + _INSERT_MESSAGES + """
    ON CONFLICT DO NOTHING RETURNING id
), claimed AS (
    INSERT INTO deliveries (message_id, channel, recipient, state, claim_token)
    SELECT leg->>0, leg->>1, leg->>2, 'sending', leg->>3
    FROM json_array_elements(CAST(:legs AS json)) AS leg
    WHERE leg->>0 IN (SELECT id FROM written)
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING message_id, channel, recipient
)
SELECT id AS message_id, NULL AS channel, NULL AS recipient FROM written
UNION ALL
SELECT message_id, channel, recipient FROM claimed
""")

# One statement writes a flush — messages, delivery upserts, their events — and first claims
# the flush's id in ledger_flushes: when the id is there already, the flush was applied before
# (its reply was lost, or its writer stopped waiting) and nothing is written again. It also
# deletes the ids of earlier flushes the writer knows landed. The final states in the upsert's
# WHERE keep a finished delivery untouched by anything late; its rows come in key order, so two
# writers upserting overlapping rows lock them in the same order. Each event's attempt, unless
# given, is counted from the attempts the upsert returned (none for a finished delivery).
WRITE = Statement.parse("""
WITH guard AS (
    INSERT INTO ledger_flushes (id) VALUES (:flush) ON CONFLICT DO NOTHING RETURNING id
), cleared AS (
    DELETE FROM ledger_flushes
    WHERE id IN (SELECT json_array_elements_text(CAST(:landed AS json)))
), written_messages AS (""" + _INSERT_MESSAGES + """
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT DO NOTHING
), upserted AS (
    INSERT INTO deliveries AS d (message_id, channel, recipient, state, provider,
                                 provider_message_id, attempts, last_error, created_at,
                                 updated_at, sent_at)
    SELECT message_id, channel, recipient, state, provider, provider_message_id, attempts,
           last_error, at, last_at, sent_at
    FROM json_to_recordset(CAST(:deliveries AS json))
         AS u(message_id text, channel text, recipient text, state text, provider text,
              provider_message_id text, attempts integer, last_error text, at timestamptz,
              sent_at timestamptz, last_at timestamptz)
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT (message_id, channel, recipient) DO UPDATE SET
        state = CASE WHEN excluded.state = 'accepted' THEN d.state ELSE excluded.state END,
        -- out of 'sending': no claim token may take it back (see pipelines.intents)
        claim_token = CASE WHEN excluded.state = 'accepted' THEN d.claim_token END,
        attempts = d.attempts + excluded.attempts,
        provider = coalesce(excluded.provider, d.provider),
        provider_message_id = coalesce(excluded.provider_message_id, d.provider_message_id),
        last_error = coalesce(excluded.last_error, d.last_error),
        sent_at = coalesce(d.sent_at, excluded.sent_at),
        updated_at = greatest(d.updated_at, excluded.updated_at)
    WHERE d.state NOT IN ('sent', 'filtered', 'dead')
    RETURNING d.message_id, d.channel, d.recipient, d.attempts
)
INSERT INTO delivery_events (message_id, channel, recipient, state, attempt, provider,
                             provider_message_id, error, duration_ms, at)
SELECT e.message_id, e.channel, e.recipient, e.state,
       coalesce(e.attempt, upserted.attempts - e.batch_attempts + e.seq),
       e.provider, e.provider_message_id, e.error, e.duration_ms, e.at
FROM json_to_recordset(CAST(:events AS json))
     AS e(message_id text, channel text, recipient text, state text, attempt integer,
          seq integer, batch_attempts integer, provider text, provider_message_id text,
          error text, duration_ms double precision, at timestamptz, n integer)
LEFT JOIN upserted USING (message_id, channel, recipient)
WHERE EXISTS (SELECT FROM guard)
ORDER BY e.n
""")

OWNERS = Statement.parse("""
SELECT m.id, coalesce(m.tenant, '') AS tenant, m.idempotency_key
FROM messages AS m
JOIN unnest(CAST(:tenant AS text[]), CAST(:idempotency_key AS text[])) AS k(tenant, key)
  ON coalesce(m.tenant, '') = k.tenant AND m.idempotency_key = k.key
WHERE m.idempotency_key IS NOT NULL
""")


def message_rows(records: Sequence[MessageRecord]) -> str:
    """The ``:messages`` parameter of CLAIM and WRITE."""
    return json_param([{
        "id": r.id, "topic": r.topic, "key": r.key, "priority": r.priority, "type": r.type,
        "tenant": r.tenant, "idempotency_key": r.idempotency_key, "payload": r.payload,
        "trace_id": r.trace_id, "created_at": r.created_at,
    } for r in records])


def write_params(
    flush: str, landed: Sequence[str], messages: Sequence[MessageRecord],
    pending: dict[DeliveryKey, DeliveryRow],
) -> dict[str, str]:
    """WRITE's parameters: the flush's id, the ids of earlier flushes known to have landed,
    the messages, the delivery upserts in key order (see there) and every event of each (its
    ``seq`` numbers the attempts its merged row counts)."""
    deliveries: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for key, row in sorted(pending.items()):
        message_id, channel, recipient = key
        deliveries.append({
            "message_id": message_id, "channel": channel, "recipient": recipient,
            "state": row.state, "provider": row.provider,
            "provider_message_id": row.provider_message_id, "attempts": row.attempts,
            "last_error": row.error, "at": row.at, "sent_at": row.sent_at,
            "last_at": row.last_at,
        })
        events += [{
            "n": len(events) + index,  # recorded order, which the join would not keep
            "message_id": message_id, "channel": channel, "recipient": recipient,
            "state": event.state, "attempt": event.attempt, "seq": event.seq,
            "batch_attempts": row.attempts, "provider": event.provider,
            "provider_message_id": event.provider_message_id, "error": event.error,
            "duration_ms": event.duration_ms, "at": event.at,
        } for index, event in enumerate(row.events)]
    return {"flush": flush, "landed": json_param(list(landed)),
            "messages": message_rows(messages), "deliveries": json_param(deliveries),
            "events": json_param(events)}


async def claim_owners(direct: DirectPool, claims: list[Claim]) -> dict[Claim, str]:
    """The id of the message holding each (tenant, idempotency key)."""
    if not claims:
        return {}
    params = {"tenant": [c[0] for c in claims], "idempotency_key": [c[1] for c in claims]}
    rows = await direct.fetch(OWNERS, params)
    return {(row["tenant"], row["idempotency_key"]): row["id"] for row in rows}


def one_line(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(str(exc).split()) or type(exc).__name__
