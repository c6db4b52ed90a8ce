"""Delivery analytics in PostgreSQL: roll-ups of delivery events, reports, one notification's
trace, and retention."""

from tidings.analytics.report import Report, build_report
from tidings.analytics.retention import Removed, Retention, apply_retention
from tidings.analytics.rollup import RollUp, roll_up
from tidings.analytics.trace import Trace, UnknownNotification, load_trace

__all__ = [
    "Removed",
    "Report",
    "Retention",
    "RollUp",
    "Trace",
    "UnknownNotification",
    "apply_retention",
    "build_report",
    "load_trace",
    "roll_up",
]
