"""Trace ids in log lines: the id of the message being handled, kept in a context variable.

The consumer sets it around each handler call and the deliver step around each delivery, so
every line logged meanwhile — by tidings, a provider or user code — can name the notification
it concerns. :class:`TraceIdFilter` copies it onto log records for formatters.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from tidings.message import Message

# A context variable must live at module level (each task sees its own value): it holds no
# state of its own, only the current task's trace id.
current_trace: ContextVar[str | None] = ContextVar("tidings_trace_id", default=None)


def trace_of(message: Message[Any]) -> str:
    """A message's trace id: the one its envelope carries, else its own id."""
    return message.envelope.trace_id or message.id


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` (the current trace id, or ``-``) and ``trace`` (`` [trace ID]`` or
    nothing) to every record, for ``%(trace_id)s`` / ``%(trace)s`` in a format.

    Attach it to a handler: filters on a logger do not see records of its child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        trace = current_trace.get()
        record.trace_id = trace or "-"
        record.trace = f" [trace {trace}]" if trace else ""
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(trace)s: %(message)s"
"""The CLI's log line: the trace id follows the logger's name when a message is in hand."""


def install_trace_ids(handlers: list[logging.Handler]) -> None:
    """Put a TraceIdFilter on each handler that has none yet."""
    for handler in handlers:
        if not any(isinstance(f, TraceIdFilter) for f in handler.filters):
            handler.addFilter(TraceIdFilter())
