"""One notification's story from PostgreSQL: the message, its deliveries, every event in time
order, its dead letters and their replays, with times in ms after acceptance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.errors import TidingsError
from tidings.tables import (
    dead_letter_replays,
    dead_letters,
    deliveries,
    delivery_events,
    messages,
)

_MESSAGE = ("id", "topic", "type", "tenant", "priority", "key", "idempotency_key", "trace_id",
            "created_at")
_DELIVERY = ("channel", "recipient", "state", "provider", "provider_message_id", "attempts",
             "last_error", "created_at", "updated_at", "sent_at")
_EVENT = ("at", "channel", "recipient", "state", "attempt", "provider", "provider_message_id",
          "error", "duration_ms")
_DEAD = ("id", "topic", "partition", "group_name", "kind", "error_type", "error_message",
         "attempts", "deliveries", "state", "replays", "created_at", "replayed_at")
_REPLAY = ("dead_letter_id", "replayed_by", "forced", "target_stream", "new_entry_id",
           "replayed_at")


class UnknownNotification(TidingsError):
    """No message, delivery event or dead letter carries this id."""


@dataclass(slots=True)
class Trace:
    """What PostgreSQL knows of one notification; each item is a dict of its columns."""

    id: str
    message: dict[str, Any] | None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    replays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def origin(self) -> datetime | None:
        """Acceptance time (else the earliest time known): what ``ms`` counts from."""
        if self.message is not None:
            accepted: datetime = self.message["created_at"]
            return accepted
        times = [e["at"] for e in self.events] + [d["created_at"] for d in self.dead_letters]
        return min(times, default=None)

    def ms(self, instant: datetime | None) -> float | None:
        """``instant`` in ms after :attr:`origin`."""
        origin = self.origin
        if instant is None or origin is None:
            return None
        return (instant - origin).total_seconds() * 1000

    def to_json(self) -> dict[str, Any]:
        """A JSON-able document; each event, dead letter and replay carries its ``ms``."""
        def timed(items: list[dict[str, Any]], at: str) -> list[dict[str, Any]]:
            return [{**_jsonable(item), "ms": self.ms(item[at])} for item in items]

        return {
            "id": self.id,
            "message": None if self.message is None else _jsonable(self.message),
            "deliveries": [_jsonable(d) for d in self.deliveries],
            "events": timed(self.events, "at"),
            "dead_letters": timed(self.dead_letters, "created_at"),
            "replays": timed(self.replays, "replayed_at"),
        }


def _plain(row: Any) -> dict[str, Any]:
    # Column names come back as quoted_name, a str subclass JSON encoders refuse.
    return {str(key): value for key, value in row.items()}


def _jsonable(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in item.items()}


async def load_trace(engine: AsyncEngine, message_id: str) -> Trace:
    """The story of ``message_id``; UnknownNotification when nothing carries that id."""
    def columns(table: Any, names: tuple[str, ...]) -> list[Any]:
        return [table.c[name] for name in names]

    dead_query = select(*columns(dead_letters, _DEAD)).where(or_(
        dead_letters.c.message_id == message_id,
        dead_letters.c.headers["tidings.message"].astext == message_id,
    )).order_by(dead_letters.c.created_at, dead_letters.c.id)
    async with engine.connect() as conn:
        found = (await conn.execute(select(*columns(messages, _MESSAGE))
                                    .where(messages.c.id == message_id))).mappings().first()
        trace = Trace(message_id, None if found is None else _plain(found))
        trace.deliveries = [_plain(r) for r in (await conn.execute(
            select(*columns(deliveries, _DELIVERY)).where(deliveries.c.message_id == message_id)
            .order_by(deliveries.c.channel, deliveries.c.recipient))).mappings()]
        trace.events = [_plain(r) for r in (await conn.execute(
            select(*columns(delivery_events, _EVENT))
            .where(delivery_events.c.message_id == message_id)
            .order_by(delivery_events.c.at, delivery_events.c.id))).mappings()]
        trace.dead_letters = [_plain(r) for r in (await conn.execute(dead_query)).mappings()]
        dead_ids = [d["id"] for d in trace.dead_letters]
        trace.replays = [_plain(r) for r in (await conn.execute(
            select(*columns(dead_letter_replays, _REPLAY)).where(or_(
                dead_letter_replays.c.dead_letter_id.in_(dead_ids),
                dead_letter_replays.c.message_id == message_id,
            )).order_by(dead_letter_replays.c.replayed_at, dead_letter_replays.c.id)
        )).mappings()]
    if trace.message is None and not trace.events and not trace.dead_letters:
        raise UnknownNotification(
            f"no notification {message_id!r} in the ledger or the dead letters: check the id "
            "(the one `tidings publish` printed), TIDINGS_DATABASE_SCHEMA, and whether "
            "retention removed it"
        )
    return trace


def _ms(value: float | None) -> str:
    return "" if value is None else f"+{value:,.1f} ms"


def _steps(trace: Trace) -> list[tuple[float, list[str]]]:
    """Timeline rows (ms, cells) of the message, its events, dead letters and replays."""
    steps: list[tuple[float, list[str]]] = []

    def add(instant: datetime, *cells: str) -> None:
        ms = trace.ms(instant) or 0.0
        steps.append((ms, [_ms(ms), *cells]))

    if trace.message is not None:
        add(trace.message["created_at"], "accepted", "", "", "", "", "", trace.message["topic"])
    for e in trace.events:
        provider = " ".join(p for p in (e["provider"], e["provider_message_id"]) if p)
        took = "" if e["duration_ms"] is None else f"{e['duration_ms']:,.1f} ms"
        add(e["at"], e["state"], e["channel"], e["recipient"],
            "" if e["attempt"] is None else str(e["attempt"]), provider, took, e["error"] or "")
    for d in trace.dead_letters:
        add(d["created_at"], f"dead letter #{d['id']}", "", "", str(d["attempts"]),
            d["group_name"], "",
            f"{d['kind']}: {d['error_message']} ({d['state']}, {d['replays']} replays)")
    for r in trace.replays:
        forced = ", forced" if r["forced"] else ""
        add(r["replayed_at"], f"replay of #{r['dead_letter_id']}", "", "", "",
            r["new_entry_id"] or "", "", f"by {r['replayed_by']} to {r['target_stream']}{forced}")
    return steps


def trace_renderable(trace: Trace) -> RenderableType:
    """The story as text and tables for a rich console."""
    m = trace.message
    head = Text.assemble(("notification ", "bold"), (trace.id, "bold cyan"))
    if m is None:
        head.append("\nnot in the ledger (never accepted, or removed): dead letters only")
    else:
        head.append(f"\naccepted {m['created_at']:%Y-%m-%d %H:%M:%S.%f} UTC on {m['topic']}: "
                    f"type {m['type'] or '-'}, tenant {m['tenant'] or '-'}, "
                    f"priority {m['priority']}, key {m['key'] or '-'}, "
                    f"trace id {m['trace_id'] or '-'}")
    parts: list[RenderableType] = [head]
    if trace.deliveries:
        table = Table(title="deliveries", title_justify="left")
        for name in ("channel", "recipient", "state", "attempts", "provider", "provider id",
                     "last error"):
            table.add_column(name, overflow="fold")
        for d in trace.deliveries:
            table.add_row(d["channel"], d["recipient"], d["state"], str(d["attempts"]),
                          d["provider"] or "", d["provider_message_id"] or "",
                          d["last_error"] or "")
        parts.append(table)
    timeline = Table(title="timeline", title_justify="left")
    for name in ("time", "step", "channel", "recipient", "attempt", "provider / id", "took",
                 "detail"):
        timeline.add_column(name, overflow="fold", justify="right" if name == "time" else "left")
    for _, cells in sorted(_steps(trace), key=lambda step: step[0]):
        timeline.add_row(*cells)
    parts.append(timeline)
    return Group(*parts)
