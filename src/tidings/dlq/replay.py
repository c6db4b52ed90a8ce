"""Replaying dead letters into the retry stream of the agent that gave up on them, once.

One PostgreSQL transaction per letter marks it replayed, writes the audit row and resets its
dead ledger rows; once it is committed, the message is published (XADD keyed by the audit
row, so a publish tried again adds it once) and the audit row gets the new entry's id. A
replay committed and not published is finished by the next replay of the letter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.dlq.edits import Edit, apply_edits
from tidings.dlq.letters import read_envelope
from tidings.dlq.store import UnknownDeadLetter
from tidings.errors import TidingsError
from tidings.keys import PartitionKeys
from tidings.message import (
    DELAY_HEADER,
    LEDGER_HEADER,
    REPLAY_HEADER,
    SINCE_HEADER,
    Envelope,
    encode,
    now_ms,
)
from tidings.pipelines.sending import UNKNOWN_PREFIX
from tidings.streams import RedisTransport
from tidings.tables.dead_letters import dead_letter_replays, dead_letters

_D = dead_letters.c
MARKER_TTL_MS = 30 * 86_400_000  # longer than any retry of one replay could take
# The entry id of a replay whose publish found its marker: an earlier try published it.
PUBLISHED_EARLIER = "published by an earlier try"

# Only the replayed stage's channels (a letter of one channel must not reset another's legs),
# and, without --force, never a leg whose send may have happened (outcome unknown).
_RESET = text("""
UPDATE deliveries SET state = 'failed', last_error = :why, updated_at = now()
WHERE message_id = :message_id AND state = ANY(:states)
  AND (CAST(:channels AS text[]) IS NULL OR channel = ANY(CAST(:channels AS text[])))
  AND (:force OR last_error IS NULL OR left(last_error, length(:unknown)) <> :unknown)
""")


def _dispatch(payload: bytes | None) -> dict[str, Any]:
    """The payload as a JSON object, or {} (a notification pipeline dispatch carries its
    ledger ``message_id`` and ``channels``)."""
    try:
        value = orjson.loads(payload) if payload is not None else None
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _channels(payload: bytes | None) -> list[str] | None:
    """The channels a channel-stage letter (a dispatch) covers; None: every channel."""
    channels = _dispatch(payload).get("channels")
    if isinstance(channels, list) and all(isinstance(c, str) for c in channels):
        return channels
    return None


def _ledger_id(envelope: Envelope, payload: bytes | None) -> str:
    """The ledger message a letter belongs to: its header, else (a dispatch the scheduler
    published) its payload's ``message_id``, else its own id."""
    carried = _dispatch(payload).get("message_id")
    fallback = carried if isinstance(carried, str) else envelope.id
    return envelope.headers.get(LEDGER_HEADER) or fallback


class ReplayError(TidingsError):
    """A dead letter that cannot be replayed as asked (already replayed, unreadable, …)."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """What one replay did."""

    dead_letter_id: int
    audit_id: int
    target_stream: str
    new_entry_id: str | None
    """None when an earlier try of this very replay had published it already."""
    deliveries_reset: int
    forced: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.dead_letter_id, "audit_id": self.audit_id, "stream": self.target_stream,
            "entry_id": self.new_entry_id, "deliveries_reset": self.deliveries_reset,
            "forced": self.forced,
        }


Progress = Callable[[int, "Replayed | TidingsError"], None]


class Replayer:
    """Replays dead letters of one schema into the retry streams of one Redis namespace."""

    def __init__(self, engine: AsyncEngine, client: Redis, namespace: str, *, by: str) -> None:
        self.engine = engine
        self.transport = RedisTransport(client)
        self.namespace = namespace
        self.by = by

    async def replay(
        self, ids: Sequence[int], edits: Sequence[Edit] = (), *, force: bool = False,
        rate: float | None = None, progress: Progress | None = None,
    ) -> list[Replayed | TidingsError]:
        """Replay each id in turn, at most ``rate`` a second; a refusal does not stop the rest."""
        interval = 1 / rate if rate else 0.0
        due = time.monotonic()
        outcomes: list[Replayed | TidingsError] = []
        for dead_letter_id in ids:
            if interval:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due = max(due, time.monotonic() - interval) + interval
            try:
                outcome: Replayed | TidingsError = await self.replay_one(
                    dead_letter_id, edits, force=force
                )
            except TidingsError as exc:
                outcome = exc
            outcomes.append(outcome)
            if progress is not None:
                progress(dead_letter_id, outcome)
        return outcomes

    async def replay_one(
        self, dead_letter_id: int, edits: Sequence[Edit] = (), *, force: bool = False
    ) -> Replayed:
        """Replay one dead letter, with ``edits`` applied to its payload.

        The ledger reset, the letter's new state and the audit row are committed first, the
        message published after: published before the commit, a commit that failed would leave
        it in the retry stream with its legs still 'dead', and its worker would not send it.
        A replay whose publish failed (or whose process died before it) is finished by the
        next replay of the letter: its audit row, without an entry id, says it is still owed.
        """
        async with self.engine.begin() as conn:
            row = await _locked(conn, dead_letter_id)
            owed = None if force else await _owed(conn, row)
            if owed is not None:
                if edits:
                    raise ReplayError(
                        f"dead letter {dead_letter_id} has a replay still to be published"
                        f" (audit {owed.id}); run the replay again without --set to finish it")
                edits = [Edit.named(name, value) for name, value in owed.edits.items()]
            envelope, payload, target = self._check(row, edits, force or owed is not None)
            if owed is None:
                audit_id, reset = await self._commit(conn, row, envelope, payload, target,
                                                     edits, force)
            else:
                audit_id, reset = owed.id, 0
        fields = encode(_replayed(envelope, audit_id),
                        payload if payload is not None else b"null")
        keys = PartitionKeys(self.namespace, row.topic, row.partition)
        try:
            [added] = await self.transport.add_once(
                [(f"{keys.tag}:replay:{dead_letter_id}:a{audit_id}", target, fields)],
                MARKER_TTL_MS)
        except Exception as exc:
            raise ReplayError(
                f"dead letter {dead_letter_id} is marked replayed, but its message could not"
                f" be published ({type(exc).__name__}: {exc}); run the replay again to"
                " publish it") from exc
        new_entry_id = added.decode() if added is not None else None
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dead_letter_replays).where(dead_letter_replays.c.id == audit_id)
                .values(new_entry_id=new_entry_id or PUBLISHED_EARLIER))
        return Replayed(dead_letter_id, audit_id, target, new_entry_id, reset, force)

    async def _commit(self, conn: AsyncConnection, row: Any, envelope: Envelope,
                      payload: bytes | None, target: str, edits: Sequence[Edit],
                      force: bool) -> tuple[int, int]:
        """Audit the replay, reset the letter's dead legs, mark it replayed: (audit id, legs
        reset)."""
        audit_id = int((await conn.execute(
            insert(dead_letter_replays).values(
                dead_letter_id=row.id, message_id=envelope.id, replayed_by=self.by,
                edits={e.name: e.value for e in edits}, forced=force, target_stream=target,
            ).returning(dead_letter_replays.c.id)
        )).scalar_one())
        states = ["dead", "sent", "sending"] if force else ["dead"]
        reset = await conn.execute(_RESET, {
            "why": f"replayed from dead letter {row.id} by {self.by}",
            "message_id": _ledger_id(envelope, payload), "states": states,
            "channels": _channels(payload), "force": force, "unknown": UNKNOWN_PREFIX,
        })
        await conn.execute(
            update(dead_letters).where(_D.id == row.id)
            .values(state="replayed", replays=_D.replays + 1, replayed_at=text("now()"))
        )
        return audit_id, int(reset.rowcount)

    async def preview(
        self, dead_letter_id: int, edits: Sequence[Edit] = (), *, force: bool = False
    ) -> dict[str, Any]:
        """What :meth:`replay_one` would do, without doing it; raises what it would raise."""
        async with self.engine.connect() as conn:
            row = await _locked(conn, dead_letter_id, lock=False)
        envelope, _, target = self._check(row, edits, force)
        return {"id": dead_letter_id, "topic": row.topic, "group": row.group_name,
                "message_id": envelope.id, "stream": target, "state": row.state,
                "edits": {e.name: e.value for e in edits}}

    def _check(
        self, row: Any, edits: Sequence[Edit], force: bool
    ) -> tuple[Envelope, bytes | None, str]:
        if row.state == "replayed" and not force:
            raise ReplayError(
                f"dead letter {row.id} was already replayed ({row.replays} time(s), last at"
                f" {row.replayed_at:%Y-%m-%d %H:%M:%S %Z}); add --force to replay it again"
            )
        envelope = read_envelope(row.envelope)
        if envelope is None:
            raise ReplayError(
                f"dead letter {row.id} has no readable envelope ({row.kind}: "
                f"{row.error_message}); it cannot be replayed, only inspected or purged"
            )
        payload = apply_edits(row.payload, edits)
        target = PartitionKeys(self.namespace, row.topic, row.partition).retry(row.group_name)
        return envelope, payload, target


def _replayed(envelope: Envelope, audit_id: int) -> Envelope:
    """A fresh start for the letter's message: attempt 1 and no last delay, but the error
    history stays; the replay header names the audit row."""
    envelope.attempt = 1
    envelope.enqueued_ms = now_ms()
    headers = {k: v for k, v in envelope.headers.items()
               if k not in (DELAY_HEADER, SINCE_HEADER)}
    envelope.headers = {**headers, REPLAY_HEADER: str(audit_id)}
    return envelope


async def _owed(conn: AsyncConnection, row: Any) -> Any:
    """The letter's last replay if it was committed and never published, else None."""
    if row.state != "replayed":
        return None
    last = (await conn.execute(
        select(dead_letter_replays.c.id, dead_letter_replays.c.edits,
               dead_letter_replays.c.new_entry_id)
        .where(dead_letter_replays.c.dead_letter_id == row.id)
        .order_by(dead_letter_replays.c.id.desc()).limit(1)
    )).first()
    return last if last is not None and last.new_entry_id is None else None


async def _locked(conn: AsyncConnection, dead_letter_id: int, *, lock: bool = True) -> Any:
    query = select(dead_letters).where(_D.id == dead_letter_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise UnknownDeadLetter(
            f"no dead letter {dead_letter_id}: see `tidings dlq list` for the ids"
        )
    return row
