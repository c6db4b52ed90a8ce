"""OpenTelemetry spans around handlers and provider calls, when the ``otel`` extra is installed
and a tracer provider is configured; otherwise each call here costs one check.

A notification's trace id (32 hex digits: the id of the message that started it, carried by
every message derived from it) becomes the OpenTelemetry trace id, so the spans of one
notification land in one trace whichever processes handled it. ``configure_from_env()`` (called
by the CLI) installs an SDK provider exporting over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; an application may configure its own provider instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

try:
    from opentelemetry import trace as otel
except ImportError:  # the optional extra is not installed
    otel = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.context import Context

Attributes = Mapping[str, str | int | float | bool]


def _provider() -> otel.TracerProvider:
    return otel.get_tracer_provider()


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and a real provider was set."""
    return otel is not None and not isinstance(
        _provider(), otel.ProxyTracerProvider | otel.NoOpTracerProvider
    )


@contextlib.contextmanager
def span(name: str, trace_id: str | None, attributes: Attributes) -> Iterator[None]:
    """A span named ``name`` in the trace ``trace_id``; an exception is recorded on it."""
    if not enabled():
        yield
        return
    tracer = _provider().get_tracer("tidings")
    with tracer.start_as_current_span(name, context=_parent(trace_id),
                                      kind=otel.SpanKind.CONSUMER, attributes=dict(attributes)):
        yield


def _parent(trace_id: str | None) -> Context | None:
    """A remote parent carrying our trace id, so spans of one notification share a trace."""
    if trace_id is None or len(trace_id) != 32:
        return None
    try:
        number = int(trace_id, 16)
    except ValueError:
        return None
    if number == 0:
        return None
    parent = otel.SpanContext(
        trace_id=number, span_id=(number & 0xFFFF_FFFF_FFFF_FFFF) or 1, is_remote=True,
        trace_flags=otel.TraceFlags(otel.TraceFlags.SAMPLED),
    )
    return otel.set_span_in_context(otel.NonRecordingSpan(parent))


def configure_from_env() -> bool:
    """Export spans over OTLP/HTTP if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and no provider
    is configured yet; returns whether it did. Needs ``pip install 'tidings[otel]'``."""
    if otel is None or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "tidings")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    otel.set_tracer_provider(provider)
    return True
