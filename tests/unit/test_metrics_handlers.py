"""Handler timing and trace ids in log lines, on the in-memory transport."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tidings import App, Message
from tidings.batch import Batch
from tidings.observability.logs import LOG_FORMAT, TraceIdFilter, current_trace, install_trace_ids
from tidings.testing import running

log = logging.getLogger("tidings.test.handler")


async def test_each_handler_call_is_timed() -> None:
    app = App("timed")
    topic = app.topic("jobs", partitions=1)

    @app.agent(topic, name="timed.work")
    async def work(message: Message[int]) -> None:
        pass

    async with running(app) as harness:
        await topic.send_many(range(7))
        await harness.drain()

    assert work.stats.handler_seconds.count == 7


async def test_a_batch_agent_is_timed_once_per_batch() -> None:
    app = App("timed-batch")
    topic = app.topic("jobs", partitions=1)
    sizes: list[int] = []

    @app.agent(topic, name="timed.batch", batch=True)
    async def work(batch: Batch[int]) -> None:
        sizes.append(len(batch))

    async with running(app) as harness:
        await topic.send_many(range(30))
        await harness.drain()

    assert sum(sizes) == 30
    assert work.stats.handler_seconds.count == len(sizes)


async def test_a_line_logged_by_a_handler_carries_the_message_s_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("traced")
    topic = app.topic("jobs", partitions=1)

    @app.agent(topic, name="traced.work")
    async def work(message: Message[str]) -> None:
        log.info("handling %s", message.value)

    install_trace_ids([caplog.handler])
    with caplog.at_level(logging.INFO, logger=log.name):
        async with running(app) as harness:
            plain = await topic.send("plain")
            await topic.send("traced", trace_id="trace-7")
            await harness.drain()

    traces = {r.getMessage(): getattr(r, "trace_id", None) for r in caplog.records
              if r.name == log.name}
    assert traces == {"handling plain": plain, "handling traced": "trace-7"}


async def test_the_retry_of_a_failed_message_is_logged_with_its_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("traced-failing")
    topic = app.topic("jobs", partitions=1)

    @app.agent(topic, name="traced.failing")
    async def work(message: Message[str]) -> None:
        raise ValueError("no")

    install_trace_ids([caplog.handler])
    with caplog.at_level(logging.INFO, logger="tidings.consumer"):
        async with running(app):
            await topic.send("x", trace_id="trace-9")
            for _ in range(500):
                if work.stats.retried:
                    break
                await asyncio.sleep(0.01)

    retries = [r for r in caplog.records if r.name == "tidings.consumer"
               and "retries message" in r.getMessage()]
    assert retries
    assert {getattr(r, "trace_id", None) for r in retries} == {"trace-9"}


def test_the_cli_format_shows_the_trace_id_only_when_there_is_one() -> None:
    formatter = logging.Formatter(LOG_FORMAT)
    trace_filter = TraceIdFilter()

    def line(trace: str | None) -> str:
        token = current_trace.set(trace)
        try:
            record = logging.LogRecord("tidings.x", logging.INFO, __file__, 1, "sent", (), None)
            trace_filter.filter(record)
            return formatter.format(record)
        finally:
            current_trace.reset(token)

    assert line("abc123").endswith("INFO tidings.x [trace abc123]: sent")
    assert line(None).endswith("INFO tidings.x: sent")
