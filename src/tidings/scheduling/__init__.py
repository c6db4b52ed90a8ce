"""Schedules: one-shot, interval and cron, in PostgreSQL, fired exactly once into topics."""

from tidings.scheduling.calendar import InvalidSchedule, Timing
from tidings.scheduling.relay import Relay
from tidings.scheduling.schedule import Fire, Schedule, ScheduleStatus, UnknownSchedule
from tidings.scheduling.scheduler import Scheduler
from tidings.scheduling.store import Schedules

__all__ = [
    "Fire",
    "InvalidSchedule",
    "Relay",
    "Schedule",
    "ScheduleStatus",
    "Scheduler",
    "Schedules",
    "Timing",
    "UnknownSchedule",
]
