"""A schedule's definition (when, what to publish, how to catch up) and its stored status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tidings.database import holds_nul
from tidings.errors import TidingsError
from tidings.message import Priority, dumps
from tidings.scheduling.calendar import InvalidSchedule, Timing

MAX_NAME = 200
MAX_RUNS = 2**31 - 1  # an integer column

Misfire = Literal["fire_once", "fire_all", "skip"]
MISFIRES: tuple[Misfire, ...] = ("fire_once", "fire_all", "skip")
State = Literal["active", "paused", "cancelled", "done"]


class UnknownSchedule(TidingsError):
    """A schedule name that is not stored."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """What to publish, where and when.

    ``misfire`` says what happens to ticks missed while no scheduler ran (or while they were
    late by more than the scheduler's grace): ``fire_once`` fires the first missed tick and
    carries on from now, ``fire_all`` fires every missed tick, ``skip`` fires none of them.
    """

    name: str
    timing: Timing
    topic: str
    payload: Any
    key: str | None = None
    priority: Priority = Priority.NORMAL
    max_runs: int | None = None
    misfire: Misfire = "fire_once"

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise InvalidSchedule(f"schedule name {self.name!r} must be non-empty, unpadded text")
        if len(self.name) > MAX_NAME:  # it is a unique index's key
            raise InvalidSchedule(f"schedule name {self.name[:40]!r}… is {len(self.name)}"
                                  f" characters; use at most {MAX_NAME}")
        if not self.topic or any(c in self.topic for c in "{}: \n"):
            raise InvalidSchedule(
                f"topic name {self.topic!r} may not be empty or contain braces, ':' or spaces"
            )
        if self.misfire not in MISFIRES:
            raise InvalidSchedule(
                f"misfire policy {self.misfire!r} is not one of {', '.join(MISFIRES)}"
            )
        if self.max_runs is not None and not 1 <= self.max_runs <= MAX_RUNS:
            raise InvalidSchedule(f"max_runs must be 1 to {MAX_RUNS:,} (or unset for no limit)")
        try:
            object.__setattr__(self, "priority", Priority(self.priority))
        except ValueError:
            raise InvalidSchedule(
                f"priority {self.priority!r} is not one of high, normal, low"
            ) from None
        # PayloadError now rather than at the first fire; a NUL PostgreSQL's jsonb refuses.
        if holds_nul(dumps(self.payload)):
            raise InvalidSchedule("the payload holds a NUL character (\\u0000), which"
                                  " PostgreSQL cannot store; remove it")

    def columns(self) -> dict[str, Any]:
        """The definition as ``schedules`` columns."""
        return {
            "name": self.name,
            "kind": self.timing.kind,
            "expression": self.timing.expression,
            "timezone": self.timing.timezone,
            "start_at": self.timing.start,
            "end_at": self.timing.end,
            "topic": self.topic,
            "payload": self.payload,
            "key": self.key,
            "priority": self.priority.value,
            "max_runs": self.max_runs,
            "misfire": self.misfire,
        }

    def same_timing(self, other: Schedule) -> bool:
        a, b = self.timing, other.timing
        return (a.kind, a.expression, a.timezone, a.start, a.end) == (
            b.kind, b.expression, b.timezone, b.start, b.end
        )


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A stored schedule: its definition and where it stands."""

    id: int
    schedule: Schedule
    state: State
    runs: int
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.schedule.name

    def as_json(self) -> dict[str, Any]:
        s, t = self.schedule, self.schedule.timing
        return {
            "id": self.id,
            "name": s.name,
            "kind": t.kind,
            "expression": t.expression,
            "timezone": t.timezone,
            "start": _iso(t.start),
            "end": _iso(t.end),
            "topic": s.topic,
            "payload": s.payload,
            "key": s.key,
            "priority": s.priority.value,
            "max_runs": s.max_runs,
            "misfire": s.misfire,
            "state": self.state,
            "runs": self.runs,
            "next_fire_at": _iso(self.next_fire_at),
            "last_fire_at": _iso(self.last_fire_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Fire:
    """One fired tick of a schedule, with how late it was claimed."""

    tick: datetime
    message_id: str
    fired_at: datetime
    lateness_ms: float
    scheduler: str

    def as_json(self) -> dict[str, Any]:
        return {
            "tick": _iso(self.tick),
            "message_id": self.message_id,
            "fired_at": _iso(self.fired_at),
            "lateness_ms": round(self.lateness_ms, 3),
            "scheduler": self.scheduler,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
