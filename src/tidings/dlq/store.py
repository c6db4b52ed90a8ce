"""Dead letters in PostgreSQL: list, group by error, show one with its replays, purge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    RowMapping,
    and_,
    any_,
    delete,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.dlq.filters import Filter
from tidings.errors import ConfigurationError, TidingsError
from tidings.tables.dead_letters import dead_letter_replays, dead_letters

_D = dead_letters.c
_R = dead_letter_replays.c
SUMMARY = (
    _D.id, _D.topic, _D.partition, _D.group_name, _D.kind, _D.error_type, _D.error_message,
    _D.attempts, _D.state, _D.replays, _D.message_id, _D.fingerprint, _D.first_failed_at,
    _D.last_failed_at, _D.created_at,
)


class UnknownDeadLetter(TidingsError):
    """A dead-letter id that is not stored (never recorded, or purged)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; every given condition must hold."""

    ids: tuple[int, ...] = ()
    everything: bool = False
    topic: str | None = None
    kind: str | None = None
    state: str | None = None
    since: timedelta | None = None
    older_than: timedelta | None = None
    filter: Filter | None = None

    @property
    def empty(self) -> bool:
        """True when nothing narrows it and ``everything`` was not asked for."""
        narrowing = (self.ids, self.topic, self.kind, self.state, self.since, self.older_than,
                     self.filter)
        return not self.everything and not any(x for x in narrowing)

    def where(self) -> ColumnElement[bool]:
        """The SQL part of the selection (payload terms of the filter are matched after)."""
        now = func.now()
        conditions: list[ColumnElement[bool]] = []
        if self.ids:
            conditions.append(_D.id == any_(literal(list(self.ids), ARRAY(BigInteger))))
        for column, value in ((_D.topic, self.topic), (_D.kind, self.kind),
                              (_D.state, self.state)):
            if value is not None:
                conditions.append(column == value)
        if self.since is not None:
            conditions.append(_D.last_failed_at >= now - self.since)
        if self.older_than is not None:
            conditions.append(_D.last_failed_at < now - self.older_than)
        if self.filter is not None:
            conditions.append(self.filter.where())
        return and_(true(), *conditions)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def plain(row: RowMapping) -> dict[str, Any]:
    """The row as a dict with plain ``str`` keys (column names are a str subclass orjson
    refuses)."""
    return {str(k): v for k, v in row.items()}


def summary(row: RowMapping) -> dict[str, Any]:
    """A list row as JSON-able data."""
    data = plain(row)
    for name in ("first_failed_at", "last_failed_at", "created_at", "replayed_at"):
        if name in data:
            data[name] = iso(data[name])
    data["group"] = data.pop("group_name")
    return data


def decoded(raw: bytes | None) -> tuple[Any, str | None]:
    """(JSON value, None) when ``raw`` is JSON, else (None, its text with bad bytes replaced)."""
    if raw is None:
        return None, None
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, raw.decode("utf-8", "replace")


async def resolve(conn: AsyncConnection, selection: Selection) -> ColumnElement[bool]:
    """The selection as one SQL condition, payload terms already matched to ids."""
    where = selection.where()
    if selection.filter is None or not selection.filter.payload_terms:
        return where
    rows = await conn.execute(select(_D.id, _D.payload).where(where))
    ids = [r.id for r in rows if selection.filter.matches_payload(r.payload)]
    return and_(where, _D.id == any_(literal(ids, ARRAY(BigInteger))))


class DeadLetters:
    """The dead letters of one database schema."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def find(self, selection: Selection, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters first, as JSON-able summaries."""
        async with self.engine.connect() as conn:
            where = await resolve(conn, selection)
            query = select(*SUMMARY).where(where).order_by(_D.id.desc()).limit(limit)
            return [summary(r) for r in (await conn.execute(query)).mappings()]

    async def count(self, selection: Selection) -> int:
        async with self.engine.connect() as conn:
            where = await resolve(conn, selection)
            return int((await conn.execute(select(func.count()).where(where))).scalar_one())

    async def ids(self, selection: Selection) -> list[int]:
        """Ids of the selected dead letters, oldest first (the order a replay goes in)."""
        async with self.engine.connect() as conn:
            where = await resolve(conn, selection)
            return list((await conn.execute(select(_D.id).where(where).order_by(_D.id))).scalars())

    async def groups(self, selection: Selection, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters grouped by error fingerprint, largest group first."""
        latest = (_D.last_failed_at.desc(), _D.id.desc())
        query = (
            select(
                _D.fingerprint,
                func.count().label("count"),
                func.min(_D.first_failed_at).label("first_failed_at"),
                func.max(_D.last_failed_at).label("last_failed_at"),
                func.min(_D.kind).label("kind"),
                func.min(_D.error_type).label("error_type"),
                func.array_agg(aggregate_order_by(_D.error_message, *latest))[1]
                .label("sample_error"),
                func.array_agg(aggregate_order_by(_D.id, *latest))[1].label("sample_id"),
                func.array_agg(_D.topic.distinct()).label("topics"),
                func.array_agg(_D.group_name.distinct()).label("groups"),
                func.count().filter(_D.state == "dead").label("dead"),
            )
            .group_by(_D.fingerprint)
            .order_by(func.count().desc(), func.max(_D.last_failed_at).desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.where(await resolve(conn, selection)))
            return [
                {**plain(r._mapping), "first_failed_at": iso(r.first_failed_at),
                 "last_failed_at": iso(r.last_failed_at)}
                for r in rows
            ]

    async def show(self, dead_letter_id: int) -> dict[str, Any]:
        """Every column of one dead letter, its payload decoded, and its replays."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(dead_letters).where(_D.id == dead_letter_id))).first()
            if row is None:
                raise UnknownDeadLetter(
                    f"no dead letter {dead_letter_id}: see `tidings dlq list` for the ids"
                )
            replays = await conn.execute(
                select(dead_letter_replays).where(_R.dead_letter_id == dead_letter_id)
                .order_by(_R.id)
            )
            audit = [summary_of_replay(r) for r in replays.mappings()]
        data = summary(row._mapping)
        data["payload"], data["payload_text"] = decoded(row.payload)
        data["envelope"], _ = decoded(row.envelope)
        data["replay_history"] = audit
        return data

    async def purge(self, selection: Selection) -> int:
        """Delete the selected dead letters (their replay audit stays); return how many."""
        if selection.empty:
            raise ConfigurationError(
                "purge needs a selection: ids, --all, --topic, --kind, --filter or --older-than"
            )
        async with self.engine.begin() as conn:
            where = await resolve(conn, selection)
            result = await conn.execute(delete(dead_letters).where(where).returning(_D.id))
            return len(result.all())


def summary_of_replay(row: RowMapping) -> dict[str, Any]:
    data = plain(row)
    data["replayed_at"] = iso(data["replayed_at"])
    return data
