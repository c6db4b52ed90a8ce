"""OpenTelemetry spans: one trace per notification, exceptions recorded, off when unconfigured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tidings import App, Message, Retry, Settings, tracing
from tidings.message import new_id
from tidings.testing import running


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A provider of this test's own (the global one can be set only once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", lambda: provider)
    yield exporter
    provider.shutdown()


def test_a_span_joins_the_trace_named_by_the_notification_s_trace_id(
    spans: InMemorySpanExporter,
) -> None:
    trace_id = new_id()
    with tracing.span("tidings.handle", trace_id, {"tidings.agent": "notify.sms"}):
        pass
    with tracing.span("tidings.send", trace_id, {"tidings.provider": "twilio"}):
        pass
    first, second = spans.get_finished_spans()
    assert first.context.trace_id == second.context.trace_id == int(trace_id, 16)
    assert first.attributes == {"tidings.agent": "notify.sms"}
    assert first.name == "tidings.handle"


def test_an_exception_is_recorded_on_its_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.span("tidings.handle", new_id(), {}):
        raise RuntimeError("provider is down")
    [failed] = spans.get_finished_spans()
    assert not failed.status.is_ok
    assert [e.name for e in failed.events] == ["exception"]


@pytest.mark.parametrize("trace_id", [None, "", "not-hex-" * 4, "0" * 32, "abc"])
def test_a_missing_or_odd_trace_id_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter, trace_id: str | None
) -> None:
    with tracing.span("tidings.handle", trace_id, {}):
        pass
    [own] = spans.get_finished_spans()
    assert own.context.trace_id != 0
    assert own.parent is None


def test_nothing_is_configured_from_the_environment_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure_from_env() is False


def test_spans_are_off_until_a_provider_is_configured() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracing.enabled() is False
    with tracing.span("tidings.handle", new_id(), {}):
        pass


async def test_a_handled_message_leaves_a_span_in_its_own_trace(
    spans: InMemorySpanExporter,
) -> None:
    app = App("traced")
    jobs = app.topic("traced.jobs", partitions=1)

    @app.agent(jobs, name="traced.work")
    async def work(message: Message[dict[str, int]]) -> None:
        if message.envelope.attempt == 1:
            raise Retry(delay=0.01)

    settings = Settings(namespace="tt-traced", block_ms=20)
    async with running(app, settings) as harness:
        msg_id = await jobs.send({"n": 1})
        await harness.drain()
    first, second = [s for s in spans.get_finished_spans() if s.name.startswith("tidings.handle")]
    assert first.name == "tidings.handle traced.work"
    assert first.context.trace_id == second.context.trace_id == int(msg_id, 16)
    assert (first.attributes or {})["tidings.attempt"] == 1
    assert (second.attributes or {})["tidings.attempt"] == 2
    assert [e.name for e in first.events] == ["exception"]


def test_an_otlp_endpoint_in_the_environment_installs_an_exporting_provider() -> None:
    # In a child process: a process's global tracer provider can be set only once.
    code = ("from tidings import tracing; configured = tracing.configure_from_env();"
            " print(configured, tracing.enabled())")
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
           "OTEL_SERVICE_NAME": "tidings-test"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True"]
