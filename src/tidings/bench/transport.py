"""`tidings bench transport`: raw redis-py next to tidings for send, send_many and consume + ack.

Both sides run in one process on the same Redis, interleaved slice by slice (which side goes
first alternates), so the drift and bursts of a shared machine fall on both sides alike.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from tidings.app import App
from tidings.bench.running import Step, drop_keys, emit, package_version, run_with_progress, verdict
from tidings.bench.stats import Comparison, rate
from tidings.connections import connect_redis, redacted, resolve_redis_url
from tidings.errors import TidingsError
from tidings.message import Envelope, Message, Priority, encode, new_id, now_ms
from tidings.settings import Settings
from tidings.streams import RedisTransport
from tidings.testing import running

BATCH = 100  # messages per pipeline and per XREADGROUP, on both sides
SEND_SLICE = 250  # single sends per interleaved slice
PIPELINE_SLICE = 1_000  # pipelined messages per interleaved slice
CONSUME_SLICE = 10_000  # messages prefilled, then consumed, per interleaved slice
GROUP = "bench.noop"
MEASURES = 3  # send, send_many, consume

Run = Callable[[int], Awaitable[float]]  # moves n messages, returns the seconds it took


class Notice(BaseModel):
    """A small notification, shaped like what a producer hands to tidings."""

    user_id: int
    channel: str
    template: str
    locale: str
    created_ms: int


def notices(n: int) -> list[Notice]:
    now = now_ms()
    channels = ("email", "sms", "push")
    return [
        Notice(user_id=100_000 + i, channel=channels[i % 3], template="order-confirmed",
               locale="en-GB", created_ms=now + i)
        for i in range(n)
    ]


@dataclass(frozen=True)
class Counts:
    """Messages each measure moves per run, and runs of each measure."""

    single: int = 5_000
    pipelined: int = 50_000
    consume: int = 50_000
    repeats: int = 3

    @classmethod
    def from_options(
        cls, scale: float = 1.0, single: int | None = None, pipelined: int | None = None,
        consume: int | None = None, repeats: int = 3,
    ) -> Counts:
        """Defaults times ``scale``; a count given explicitly is taken as it is."""
        def pick(explicit: int | None, default: int) -> int:
            return max(1, round(default * scale)) if explicit is None else explicit

        base = cls()
        return cls(pick(single, base.single), pick(pipelined, base.pipelined),
                   pick(consume, base.consume), repeats)


class TransportBench:
    """The raw client and the tidings app side by side, writing under one namespace."""

    def __init__(self, raw: Redis, app: App, url: str, settings: Settings) -> None:
        self.raw = raw
        self.app = app
        self.url = url
        self.settings = settings
        self.raw_stream = f"{settings.namespace}:raw"
        self.values = notices(PIPELINE_SLICE)
        self.batches = [self.values[i:i + BATCH] for i in range(0, len(self.values), BATCH)]
        # The raw side sends a real tidings entry, so both sides move the same bytes.
        envelope = Envelope(id=new_id(), created_ms=now_ms(), enqueued_ms=now_ms())
        self.fields = encode(envelope, self.values[0].model_dump_json().encode())

    async def run(self, counts: Counts, step: Step) -> list[Comparison]:
        measures = [
            (Comparison("send", "single send", counts.single, 0.7),
             self.raw_send, self.tidings_send, SEND_SLICE),
            (Comparison("send_many", f"send_many, {BATCH} a batch", counts.pipelined, 0.7),
             self.raw_send_many, self.tidings_send_many, PIPELINE_SLICE),
            (Comparison("consume", f"consume + ack, {BATCH} a read", counts.consume, 0.5),
             self.raw_consume, self.tidings_consume, CONSUME_SLICE),
        ]
        step("warming up", 0)
        await self.warm_up()
        for repeat in range(counts.repeats):
            for index, (result, raw, tidings, size) in enumerate(measures):
                step(f"{result.label}, run {repeat + 1}/{counts.repeats}",
                     repeat * len(measures) + index)
                result.add(*await self.interleaved(raw, tidings, result.count, size,
                                                   flip=repeat % 2 == 1))
        step("done", counts.repeats * len(measures))
        return [result for result, *_ in measures]

    async def warm_up(self) -> None:
        """Open connections and fill caches on both sides before anything is timed."""
        for run in (self.raw_send, self.tidings_send, self.raw_send_many, self.tidings_send_many):
            await run(BATCH)
        await self.drop_streams()

    async def interleaved(
        self, raw: Run, tidings: Run, total: int, size: int, *, flip: bool
    ) -> tuple[float, float]:
        """Both sides in alternating slices; the rate of each side over all its slices."""
        raw_s = tidings_s = 0.0
        for index, low in enumerate(range(0, total, size)):
            n = min(size, total - low)
            if (index % 2 == 0) != flip:
                raw_s += await raw(n)
                tidings_s += await tidings(n)
            else:
                tidings_s += await tidings(n)
                raw_s += await raw(n)
        await self.drop_streams()
        return rate(total, raw_s), rate(total, tidings_s)

    async def drop_streams(self) -> None:
        """Delete the streams (and with them the groups) both sides wrote so far."""
        lanes = [lane for t in ("send", "consume") for lane in self.app.get_topic(t).keys(0).lanes]
        await self.raw.delete(self.raw_stream, *lanes)

    # -- sending --------------------------------------------------------------------------

    async def raw_send(self, n: int) -> float:
        xadd, stream, fields = self.raw.xadd, self.raw_stream, self.fields
        start = time.perf_counter()
        for _ in self.values[:n]:
            await xadd(stream, fields)  # type: ignore[arg-type]
        return time.perf_counter() - start

    async def tidings_send(self, n: int) -> float:
        send = self.app.get_topic("send").send
        start = time.perf_counter()
        for value in self.values[:n]:
            await send(value)
        return time.perf_counter() - start

    async def raw_send_many(self, n: int) -> float:
        stream, fields = self.raw_stream, self.fields
        start = time.perf_counter()
        for batch in self.batches[: -(-n // BATCH)]:
            pipe = self.raw.pipeline(transaction=False)
            for _ in batch:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()
        return time.perf_counter() - start

    async def tidings_send_many(self, n: int, topic: str = "send") -> float:
        send_many = self.app.get_topic(topic).send_many
        start = time.perf_counter()
        for batch in self.batches[: -(-n // BATCH)]:
            await send_many(batch)
        return time.perf_counter() - start

    # -- consuming: each side is timed from its first read until its last ack lands -------

    async def raw_consume(self, n: int) -> float:
        """XREADGROUP COUNT 100 and one XACK per batch until all ``n`` are read."""
        raw, stream = self.raw, self.raw_stream
        await raw.delete(stream)
        for low in range(0, n, PIPELINE_SLICE):
            await self.raw_send_many(min(PIPELINE_SLICE, n - low))
        await raw.xgroup_create(stream, GROUP, id="0")
        start = time.perf_counter()
        done = 0
        while done < n:
            reply: Any = await raw.xreadgroup(GROUP, "raw", {stream: ">"}, count=BATCH)
            if not reply:
                raise TidingsError(f"the raw consumer found only {done} of {n} entries")
            ids = [entry_id for entry_id, _ in reply[0][1]]
            await raw.xack(stream, GROUP, *ids)
            done += len(ids)
        return time.perf_counter() - start

    async def tidings_consume(self, n: int) -> float:
        """An agent with a no-op handler on a topic of one partition, like the raw loop."""
        topic = self.app.get_topic("consume")
        await self.raw.delete(*topic.keys(0).lanes)
        for low in range(0, n, PIPELINE_SLICE):
            await self.tidings_send_many(min(PIPELINE_SLICE, n - low), topic="consume")
        app = App("bench-consumer", settings=self.settings)
        app.topic("consume", model=Notice, partitions=1)
        finished = asyncio.Event()
        seen = 0

        async def noop(message: Message[Notice]) -> None:
            nonlocal seen
            seen += 1
            if seen >= n:
                finished.set()

        app.agent(app.get_topic("consume"), name=GROUP)(noop)
        client = await connect_redis(self.url, self.settings)
        timeout = 30 + n / 1000
        async with running(app, self.settings, transport=RedisTransport(client),
                           consumer="bench"):
            # The agent holds its partition, its first read not yet sent: start the clock.
            start = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await finished.wait()
                    await self.until_acked(topic.keys(0).lane(Priority.NORMAL))
            except TimeoutError:
                raise TidingsError(
                    f"the agent handled {seen} of {n} messages in {timeout}s"
                ) from None
            return time.perf_counter() - start

    async def until_acked(self, lane: str) -> None:
        """The acks of the last batch ride on the agent's next read: wait until they land."""
        while True:
            summary = await self.raw.xpending(lane, GROUP)
            if not summary["pending"]:
                return
            await asyncio.sleep(0.001)


async def run_transport_bench(
    settings: Settings, counts: Counts, step: Step = lambda _label, _done: None
) -> dict[str, Any]:
    """Run every measure ``counts.repeats`` times; return the report as one JSON-able dict."""
    url = await resolve_redis_url(settings)
    namespace = f"{settings.namespace}-bench-{uuid.uuid4().hex[:8]}"
    # A short block keeps agent shutdown between consume runs quick; it is not on the hot path.
    config = settings.model_copy(update={"redis_url": url, "namespace": namespace, "block_ms": 100})
    app = App("bench")
    app.topic("send", model=Notice, partitions=1)
    app.topic("consume", model=Notice, partitions=1)
    raw = Redis.from_url(url)
    client = await connect_redis(url, config)
    started = time.perf_counter()
    try:
        await app.start(config, transport=RedisTransport(client))
        comparisons = await TransportBench(raw, app, url, config).run(counts, step)
        server = await raw.info("server")
    finally:
        await app.stop()
        await drop_keys(raw, namespace)
        await raw.aclose()
    return {
        "bench": "transport",
        "passed": all(c.passed for c in comparisons),
        "measurements": {c.name: c.to_json() for c in comparisons},
        "redis_url": redacted(url),
        "redis_version": str(server["redis_version"]),
        "redis_py_version": package_version("redis"),
        "hiredis_version": package_version("hiredis"),
        "python_version": platform.python_version(),
        "tidings_version": package_version("tidings"),
        "cpus": os.cpu_count(),
        "counts": {"send": counts.single, "send_many": counts.pipelined,
                   "consume": counts.consume},
        "repeats": counts.repeats,
        "batch": BATCH,
        "seconds": round(time.perf_counter() - started, 2),
    }


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title="tidings bench transport: raw redis-py vs tidings (medians)")
    for column in ("measure", "raw /s", "tidings /s", "ratio", "target", "result"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for m in report["measurements"].values():
        table.add_row(m["label"], f"{m['raw_per_s']:,.0f}", f"{m['tidings_per_s']:,.0f}",
                      f"{m['ratio']:.2f}", f"≥ {m['target']:.2f}", verdict(m["passed"]))
    table.caption = (
        f"Redis {report['redis_version']} · redis-py {report['redis_py_version']} · Python"
        f" {report['python_version']} · {report['repeats']} runs of each · {report['seconds']}s"
    )
    console.print(table)


async def transport_command(
    settings: Settings, counts: Counts, json_output: bool, out: Console, err: Console
) -> None:
    report = await run_with_progress(
        lambda step: run_transport_bench(settings, counts, step),
        counts.repeats * MEASURES, "connecting", err,
    )
    emit(report, json_output, out, render)
