"""Schedules in PostgreSQL: upsert by name, read, pause, resume, cancel, and one-shot delays.

Every change locks the schedule's row, so it waits for a tick holding that row and takes effect
from the next tick on. Times are the database's (``now()``), never this process's clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.message import Priority, new_id
from tidings.scheduling.calendar import Timing, aware, parse_instant, parse_zone
from tidings.scheduling.schedule import (
    Fire,
    Misfire,
    Schedule,
    ScheduleStatus,
    State,
    UnknownSchedule,
)
from tidings.tables.schedules import schedule_fires, schedules

_S = schedules.c


def timing_of(row: Row[Any]) -> Timing:
    """The stored timing, trusted: it was validated when it was written."""
    return Timing(row.kind, row.expression, ZoneInfo(row.timezone), row.start_at, row.end_at)


def status_of(row: Row[Any]) -> ScheduleStatus:
    schedule = Schedule(
        name=row.name, timing=timing_of(row), topic=row.topic, payload=row.payload, key=row.key,
        priority=Priority(row.priority), max_runs=row.max_runs, misfire=row.misfire,
    )
    return ScheduleStatus(
        id=row.id, schedule=schedule, state=row.state, runs=row.runs,
        next_fire_at=row.next_fire_at, last_fire_at=row.last_fire_at,
        created_at=row.created_at, updated_at=row.updated_at,
    )


async def _db_now(conn: AsyncConnection) -> datetime:
    now: datetime = (await conn.execute(select(func.now()))).scalar_one()
    return now


async def _locked(conn: AsyncConnection, name: str) -> Row[Any] | None:
    query = select(schedules).where(_S.name == name).with_for_update()
    return (await conn.execute(query)).first()


class Schedules:
    """The schedules stored in one database schema."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, schedule: Schedule) -> ScheduleStatus:
        """Create or update ``schedule`` by name; adding the same definition again changes nothing.

        A changed timing re-times the schedule from now; a cancelled schedule comes back to life
        with its run count reset.
        """
        return await self._write(schedule, must_exist=False)

    async def update(self, schedule: Schedule) -> ScheduleStatus:
        """Replace the definition of an existing, not cancelled, schedule."""
        return await self._write(schedule, must_exist=True)

    async def _write(self, schedule: Schedule, *, must_exist: bool) -> ScheduleStatus:
        async with self.engine.begin() as conn:
            now = await _db_now(conn)
            row = await _locked(conn, schedule.name)
            if row is None:
                if must_exist:
                    raise UnknownSchedule(f"no schedule named {schedule.name!r}")
                values = {**schedule.columns(), "next_fire_at": schedule.timing.first(now)}
                values["state"] = "active" if values["next_fire_at"] is not None else "done"
                # A concurrent add of the same name wins; this one then updates that row.
                stmt = (
                    insert(schedules).values(values)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(*schedules.c)
                )
                created = (await conn.execute(stmt)).first()
                if created is not None:
                    return status_of(created)
                row = await _locked(conn, schedule.name)
                assert row is not None
            return await self._rewrite(conn, now, status_of(row), schedule, must_exist)

    async def _rewrite(
        self, conn: AsyncConnection, now: datetime, old: ScheduleStatus, new: Schedule,
        must_exist: bool,
    ) -> ScheduleStatus:
        if old.state == "cancelled" and must_exist:
            raise UnknownSchedule(
                f"schedule {new.name!r} is cancelled: add it again to bring it back"
            )
        revive = old.state == "cancelled"
        if new == old.schedule and not revive:
            return old
        values: dict[str, Any] = new.columns()
        if revive or not new.same_timing(old.schedule) or old.state == "done":
            next_fire = new.timing.first(now)
            values["next_fire_at"] = next_fire
            state: State = "paused" if old.state == "paused" else "active"
            values["state"] = state if next_fire is not None else "done"
        if revive:
            values["runs"] = 0
        return await self._set(conn, old.id, values)

    async def _set(
        self, conn: AsyncConnection, ident: int, values: dict[str, Any]
    ) -> ScheduleStatus:
        stmt = update(schedules).where(_S.id == ident).values(values).returning(*schedules.c)
        return status_of((await conn.execute(stmt)).one())

    async def get(self, name: str) -> ScheduleStatus:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(schedules).where(_S.name == name))).first()
        if row is None:
            raise UnknownSchedule(
                f"no schedule named {name!r}: `tidings schedules list` shows them"
            )
        return status_of(row)

    async def all(self, states: Sequence[State] = (), limit: int = 1000) -> list[ScheduleStatus]:
        query = select(schedules).order_by(_S.name).limit(limit)
        if states:
            query = query.where(_S.state.in_(states))
        async with self.engine.connect() as conn:
            return [status_of(row) for row in await conn.execute(query)]

    async def fires(self, name: str, limit: int = 20) -> list[Fire]:
        """The most recent fires of ``name``, newest first."""
        f = schedule_fires.c
        query = (
            select(f.tick, f.message_id, f.fired_at, f.lateness_ms, f.scheduler)
            .join_from(schedule_fires, schedules)
            .where(_S.name == name)
            .order_by(f.tick.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [Fire(*row) for row in await conn.execute(query)]

    async def purge(self, older_than: timedelta) -> tuple[int, int]:
        """Delete finished (done or cancelled) schedules and fire records older than that.

        Returns (schedules, fires) deleted. A fire row only guards ticks a schedule has passed,
        so dropping old ones never lets a tick fire again.
        """
        async with self.engine.begin() as conn:
            cutoff = await _db_now(conn) - older_than
            fires = await conn.execute(
                delete(schedule_fires)
                .where(schedule_fires.c.fired_at < cutoff)
                .returning(schedule_fires.c.tick)
            )
            gone = await conn.execute(
                delete(schedules)
                .where(_S.state.in_(("done", "cancelled")), _S.updated_at < cutoff)
                .returning(_S.id)
            )
            return len(gone.all()), len(fires.all())

    async def pause(self, name: str) -> ScheduleStatus:
        """Stop firing; ticks that fall while paused are never fired."""
        return await self._transition(name, "paused", allowed=("active", "paused"))

    async def resume(self, name: str) -> ScheduleStatus:
        """Fire again from the next tick after now."""
        return await self._transition(name, "active", allowed=("active", "paused"))

    async def cancel(self, name: str) -> ScheduleStatus:
        """Stop for good (the row and its fires stay for the record)."""
        return await self._transition(name, "cancelled", allowed=("active", "paused", "done"))

    async def _transition(
        self, name: str, state: State, allowed: tuple[State, ...]
    ) -> ScheduleStatus:
        async with self.engine.begin() as conn:
            now = await _db_now(conn)
            row = await _locked(conn, name)
            if row is None:
                raise UnknownSchedule(
                    f"no schedule named {name!r}: `tidings schedules list` shows them"
                )
            current = status_of(row)
            if current.state == state:
                return current
            if current.state not in allowed:
                raise UnknownSchedule(f"schedule {name!r} is {current.state}; it cannot be {state}")
            values: dict[str, Any] = {"state": state}
            if state == "cancelled":
                values["next_fire_at"] = None
            elif state == "active":
                timing = current.schedule.timing
                nxt = timing.next_after(now, anchor=current.next_fire_at)
                values.update(next_fire_at=nxt, state="active" if nxt else "done")
            return await self._set(conn, current.id, values)

    async def schedule_once(
        self,
        topic: str,
        payload: Any,
        at: datetime | str,
        *,
        key: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        name: str | None = None,
        timezone: str = "UTC",
        misfire: Misfire = "fire_once",
    ) -> ScheduleStatus:
        """Publish ``payload`` to ``topic`` once, at ``at`` (held in PostgreSQL until then).

        Give ``name`` (e.g. derived from the notification id) to make retries idempotent: the
        same name and definition is stored once and fires once. A naive ``at`` is wall-clock
        time in ``timezone``; a time in the past fires at the next tick.
        """
        zone = parse_zone(timezone)
        instant = parse_instant(at, zone) if isinstance(at, str) else aware(at, zone)
        timing = Timing.parse("at", instant.isoformat(), timezone)
        schedule = Schedule(
            name=name or f"once-{new_id()}", timing=timing, topic=topic, payload=payload,
            key=key, priority=Priority(priority), max_runs=None, misfire=misfire,
        )
        return await self.add(schedule)


def replace(schedule: Schedule, **changes: Any) -> Schedule:
    """A copy of ``schedule`` with some fields changed, validated again."""
    return dataclasses.replace(schedule, **changes)
