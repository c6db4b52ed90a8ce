"""`tidings bench pipeline`: the whole notification pipeline next to a raw redis-py consume loop.

One in-process worker runs validate → route → render a stored template → send to a no-op
provider → ledger in PostgreSQL, in both topologies the pipeline offers:

- hop (the default): intake publishes each leg to its channel's topic, a second stage sends it;
- inline (``TIDINGS_INLINE_CHANNELS``): intake sends every leg itself, with no stream hop.

Two measures for each, each run several times (medians reported):

- drain: N notifications prefilled, then consumed until every one is sent and its ledger rows
  are written — notifications/s, timed from the first notification sent; the raw XREADGROUP
  COUNT 100 + XACK loop drains the same number of identical entries in the same run, taking
  turns with it (who goes first alternates);
- steady: a paced publisher in a process of its own (see :mod:`tidings.bench.load`) offers a
  fixed rate, first for a warm-up that is not measured (the pipeline's first batches open its
  database connections and load its templates), then for a few seconds — end-to-end latency
  from the envelope's creation to the provider's acceptance, p50 / p99.

For both, the benchmark process's CPU time per notification while the pipeline ran (µs): the
worker's cost, which sets the drain's ceiling and, at a steady rate, how busy the one core is.
Smaller batches cost more per notification: at 5 000/s over four partitions a read finds ~8.

The headline figures are the faster topology's (inline); both are in the report. So is the
database's own pace in the same run (one-row INSERT + COMMIT latency, rows/s for 500-row INSERTs
of JSON rows, as the ledger writes them): the pipeline is bound by PostgreSQL as much as by
Python, and a slow day for the database shows there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.app import App
from tidings.bench.load import SAMPLES, TEMPLATE, Job, Offer, fresh, sample
from tidings.bench.running import Step, drop_keys, emit, package_version, run_with_progress, verdict
from tidings.bench.stats import rate
from tidings.bench.transport import BATCH
from tidings.connections import connect_redis, open_database, redacted, resolve_redis_url
from tidings.database import quote_ident
from tidings.direct import DirectPool, Statement, json_param
from tidings.errors import TidingsError
from tidings.message import Envelope, encode, new_id, now_ms
from tidings.migrate import upgrade
from tidings.notification import CHANNELS, Channel, Notification
from tidings.pipelines.notifications import INTAKE, NotificationPipeline, Tally
from tidings.pipelines.templates import TemplateStore
from tidings.settings import Settings
from tidings.sinks.base import NoopProvider, Provider
from tidings.streams import RedisTransport
from tidings.testing import running

TARGET_PER_S = 10_000
TARGET_P99_MS = 15.0
GROUP = "bench.raw"
PREFILL_BATCH = 500
TOPOLOGIES: dict[str, frozenset[Channel]] = {"hop": frozenset(), "inline": frozenset(CHANNELS)}
HEADLINE = "inline"
MEASURES = ("notifications_per_s", "achieved_per_s", "latency_p50_ms", "latency_p99_ms",
            "drain_cpu_us", "steady_cpu_us")

@dataclass(frozen=True)
class Counts:
    """Notifications drained per run, the steady rate, how long it is held after how long a
    warm-up, runs."""

    drain: int = 20_000
    rate: int = 5_000
    steady_s: float = 4.0
    repeats: int = 3
    warmup_s: float = 1.0
    partitions: int | None = None  # of each topic; None: TIDINGS_PARTITIONS


async def _noop_providers(app: App) -> dict[Channel, Provider]:
    return {c: NoopProvider(c) for c in CHANNELS}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class PipelineBench:
    """The pipeline under test, a publisher of its own, and the raw client for the baseline."""

    def __init__(self, config: Settings, url: str, raw: Redis) -> None:
        self.config, self.url, self.raw = config, url, raw
        # One pipeline per topology; they share topics and groups, so never run together.
        self.pipelines = {
            name: NotificationPipeline(App(f"bench-{name}"), providers=_noop_providers,
                                       inline=inline)
            for name, inline in TOPOLOGIES.items()
        }
        self.publisher = App("bench-publisher")
        self.intake = self.publisher.topic(INTAKE, model=Notification)
        self.values = sample(SAMPLES)
        envelope = Envelope(id=new_id(), created_ms=now_ms(), enqueued_ms=now_ms())
        self.fields = encode(envelope, self.values[0].model_dump_json().encode())
        self.raw_stream = f"{config.namespace}:raw"

    async def publish(self, batch: list[Notification]) -> None:
        for low in range(0, len(batch), PREFILL_BATCH):
            await self.intake.send_many(batch[low:low + PREFILL_BATCH],
                                        key=lambda v: v.recipient.user_id)

    # -- the raw baseline -----------------------------------------------------------------

    async def raw_drain(self, n: int) -> float:
        """Prefill ``n`` identical entries, then XREADGROUP COUNT 100 + one XACK a batch."""
        raw, stream = self.raw, self.raw_stream
        await raw.delete(stream)
        for low in range(0, n, BATCH):
            pipe = raw.pipeline(transaction=False)
            for _ in range(min(BATCH, n - low)):
                pipe.xadd(stream, self.fields)  # type: ignore[arg-type]
            await pipe.execute()
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
        elapsed = time.perf_counter() - start
        await raw.delete(stream)
        return rate(n, elapsed)

    # -- the pipeline ---------------------------------------------------------------------

    async def tidings_drain(self, topology: str, n: int) -> tuple[float, float]:
        """Prefill ``n`` notifications, then run the pipeline until all are sent and in the
        ledger; timed from the first leg sent, since the consumers start working while the
        rest of the app is still starting (timed from the end of the start, the 2026-11-28
        figures counted a fifth of the drain that had happened before the clock ran).
        Also this process's CPU time per notification while the pipeline ran, in µs."""
        pipeline = self.pipelines[topology]
        await self.publish(fresh(self.values, 0, n))
        tally = pipeline.tally = Tally()
        cpu = time.process_time()
        async with self._running(pipeline):
            await self._until_sent(tally, n, 60 + n / 500)
            await pipeline.services.ledger.flush()
            end = time.perf_counter()
        cpu = time.process_time() - cpu
        if tally.first_sent is None:
            raise TidingsError("the drain sent nothing")
        return rate(n, end - tally.first_sent), cpu * 1e6 / n

    async def steady(self, topology: str, load: Offer) -> tuple[float, float, float, float]:
        """Offer ``load`` from a process of its own; (achieved rate, p50 ms, p99 ms) of the
        notifications published after its warm-up, and this process's CPU time per
        notification over the whole run, in µs (the publisher's is its own process's)."""
        pipeline = self.pipelines[topology]
        tally = pipeline.tally = Tally()
        job = Job(settings=self.config.model_dump(mode="json"), per_s=load.per_s,
                  warmup_s=load.warmup_s, seconds=load.seconds)
        cpu = time.process_time()
        async with self._running(pipeline):
            # The job goes on its standard input: its URLs may hold passwords, which a
            # command line would show to anyone running ps.
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tidings.bench.load", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            try:
                assert publisher.stdin is not None  # stdin=PIPE
                assert publisher.stdout is not None  # stdout=PIPE
                publisher.stdin.write(job.model_dump_json().encode() + b"\n")
                await publisher.stdin.drain()
                publisher.stdin.close()
                measured_from_ms = await next_figure(publisher, publisher.stdout)
                achieved = await next_figure(publisher, publisher.stdout)
                await publisher.wait()
            finally:
                if publisher.returncode is None:
                    publisher.kill()
                    await publisher.wait()
            total = load.warmup + load.measured
            await self._until_sent(tally, total, 60 + total / 500)
            await pipeline.services.ledger.flush()
        cpu = time.process_time() - cpu
        latencies: list[float] = list(tally.latencies_ms(measured_from_ms))
        return (achieved, _percentile(latencies, 0.5), _percentile(latencies, 0.99),
                cpu * 1e6 / total)

    @contextlib.asynccontextmanager
    async def _running(self, pipeline: NotificationPipeline) -> AsyncIterator[None]:
        """The pipeline's agents consuming, on connection pools of their own."""
        transport = RedisTransport(await connect_redis(self.url, self.config),
                                   await connect_redis(self.url, self.config))
        async with running(pipeline.app, self.config, transport=transport,
                           consumer="bench", database=True):
            yield

    @staticmethod
    async def _until_sent(tally: Tally, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(v for (_, state), v in tally.outcomes.items() if state == "sent") < n:
            if time.monotonic() > deadline:
                raise TidingsError(f"the pipeline did not send {n} notifications in "
                                   f"{timeout_s:.0f}s: {tally.outcomes}")
            await asyncio.sleep(0.002)


_BASELINE_TABLE = Statement.parse(
    "CREATE TABLE IF NOT EXISTS bench_baseline (id bigint, body text)")
_INSERT_ONE = Statement.parse("INSERT INTO bench_baseline VALUES (:id, :body)")
_INSERT_ROWS = Statement.parse("""
INSERT INTO bench_baseline SELECT CAST(r->>0 AS bigint), r->>1
FROM json_array_elements(CAST(:rows AS json)) AS r
""")
BASELINE_COMMITS, BASELINE_BATCHES, BASELINE_ROWS = 300, 20, 500


async def postgres_baseline(engine: AsyncEngine) -> tuple[float, float]:
    """PostgreSQL's pace on its own, in the bench's schema: the median one-row INSERT + COMMIT
    round trip in ms, and rows/s for INSERTs of 500 JSON rows a statement."""
    direct = DirectPool.of(engine, size=1)
    body = "x" * 200
    try:
        await direct.execute(_BASELINE_TABLE, {})
        commits = []
        for i in range(BASELINE_COMMITS):
            started = time.perf_counter()
            await direct.execute(_INSERT_ONE, {"id": i, "body": body})
            commits.append((time.perf_counter() - started) * 1000)
        rows = json_param([[i, body] for i in range(BASELINE_ROWS)])
        started = time.perf_counter()
        for _ in range(BASELINE_BATCHES):
            await direct.execute(_INSERT_ROWS, {"rows": rows})
        elapsed = time.perf_counter() - started
    finally:
        await direct.aclose()
    return median(commits), rate(BASELINE_BATCHES * BASELINE_ROWS, elapsed)


async def next_figure(publisher: asyncio.subprocess.Process, lines: asyncio.StreamReader) -> float:
    """The load process's next figure; an error if it ended without one."""
    line = await lines.readline()
    if not line:
        raise TidingsError(f"the load process ended (exit code {await publisher.wait()}) "
                           "before reporting; its error is above")
    return float(line)


def _steps(counts: Counts) -> int:
    """Progress steps: a drain and a steady run per topology and repeat."""
    return 2 * len(TOPOLOGIES) * counts.repeats


async def _seed(engine: AsyncEngine, schema: str) -> None:
    await upgrade(engine, schema)
    store = TemplateStore(engine)
    for channel in ("email", "sms", "push"):
        await store.put(TEMPLATE, channel, "en", subject="Order {{ order_id }} shipped",
                        title="Order {{ order_id }} shipped",
                        body="Hi {{ recipient.user_id }}, order {{ order_id }} left with "
                             "{{ carrier }}.")


async def run_pipeline_bench(
    settings: Settings, counts: Counts, step: Step = lambda _label, _done: None
) -> dict[str, Any]:
    """Both measures ``counts.repeats`` times; the report as one JSON-able dict."""
    url = await resolve_redis_url(settings)
    suffix = uuid.uuid4().hex[:8]
    config = settings.model_copy(update={
        "redis_url": url, "namespace": f"{settings.namespace}-bench-{suffix}",
        "database_schema": f"{settings.database_schema}_bench_{suffix}", "block_ms": 100,
        "partitions": counts.partitions or settings.partitions,
    })
    started = time.perf_counter()
    load = Offer(counts.rate, counts.warmup_s, counts.steady_s)
    raw = Redis.from_url(url)
    engine = await open_database(config)
    runs: dict[str, list[float]] = {"raw_per_s": []}
    by_topology: dict[str, dict[str, list[float]]] = {
        name: {measure: [] for measure in MEASURES} for name in TOPOLOGIES}
    try:
        await _seed(engine, config.database_schema)
        commit_ms, postgres_rows_per_s = await postgres_baseline(engine)
        bench = PipelineBench(config, url, raw)
        await bench.publisher.start(config)
        try:
            for repeat in range(counts.repeats):
                for index, (name, topology) in enumerate(by_topology.items()):
                    progress = len(TOPOLOGIES) * 2 * repeat + 2 * index
                    step(f"{name}: drain, run {repeat + 1}/{counts.repeats}", progress)
                    sides: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
                        ("raw", bench.raw_drain),
                        (name, functools.partial(bench.tidings_drain, name)),
                    ]
                    for side, measure in sides if (repeat + index) % 2 == 0 else sides[::-1]:
                        figure = await measure(counts.drain)
                        if side == "raw":
                            runs["raw_per_s"].append(figure)
                        else:
                            topology["notifications_per_s"].append(figure[0])
                            topology["drain_cpu_us"].append(figure[1])
                    step(f"{name}: steady {counts.rate:,}/s, run {repeat + 1}/{counts.repeats}",
                         progress + 1)
                    achieved, p50, p99, cpu_us = await bench.steady(name, load)
                    topology["achieved_per_s"].append(achieved)
                    topology["latency_p50_ms"].append(p50)
                    topology["latency_p99_ms"].append(p99)
                    topology["steady_cpu_us"].append(cpu_us)
            step("done", _steps(counts))
            server = await raw.info("server")
        finally:
            await bench.publisher.stop()
    finally:
        await drop_keys(raw, config.namespace)
        await raw.aclose()
        async with engine.begin() as conn:
            await conn.execute(
                text(f"DROP SCHEMA IF EXISTS {quote_ident(config.database_schema)} CASCADE"))
        await engine.dispose()
    raw_per_s = median(runs["raw_per_s"])
    topologies = {
        name: {measure: median(values) for measure, values in measures.items()}
        for name, measures in by_topology.items()
    }
    for name, figures in topologies.items():
        figures["ratio"] = figures["notifications_per_s"] / raw_per_s
        runs.update({f"{name}.{m}": values for m, values in by_topology[name].items()})
    head = topologies[HEADLINE]
    return {
        "bench": "pipeline",
        "topology": HEADLINE,
        "notifications_per_s": head["notifications_per_s"],
        "raw_per_s": raw_per_s,
        "ratio": head["ratio"],
        "latency_p50_ms": head["latency_p50_ms"],
        "latency_p99_ms": head["latency_p99_ms"],
        "offered_per_s": counts.rate,
        "achieved_per_s": head["achieved_per_s"],
        "targets": {"notifications_per_s": TARGET_PER_S, "latency_p99_ms": TARGET_P99_MS},
        "passed": {
            "throughput": head["notifications_per_s"] >= TARGET_PER_S,
            "latency": head["latency_p99_ms"] <= TARGET_P99_MS,
        },
        "topologies": topologies,
        "runs": runs,
        "counts": {"drain": counts.drain, "steady": load.measured, "warmup": load.warmup},
        "partitions": config.partitions,
        "repeats": counts.repeats,
        "ledger": True,
        "provider": "noop",
        "redis_url": redacted(url),
        "postgres_commit_ms": round(commit_ms, 3),
        "postgres_rows_per_s": postgres_rows_per_s,
        "redis_version": str(server["redis_version"]),
        "redis_py_version": package_version("redis"),
        "python_version": platform.python_version(),
        "tidings_version": package_version("tidings"),
        "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title="tidings bench pipeline: validate → route → render → noop send → ledger"
                        " (medians)")
    for column in ("measure", "raw redis-py", *TOPOLOGIES, "target", "result"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    figures = report["topologies"]

    def row(measure: str, fmt: str) -> list[str]:
        return [fmt.format(figures[name][measure]) for name in TOPOLOGIES]

    table.add_row("drain, notifications/s", f"{report['raw_per_s']:,.0f}",
                  *row("notifications_per_s", "{:,.0f}"), f"≥ {TARGET_PER_S:,}",
                  verdict(report["passed"]["throughput"]))
    table.add_row(f"achieved of {report['offered_per_s']:,}/s offered", "",
                  *row("achieved_per_s", "{:,.0f}"), "", "")
    table.add_row(f"p50 at {report['offered_per_s']:,}/s offered, ms", "",
                  *row("latency_p50_ms", "{:.1f}"), "", "")
    table.add_row(f"p99 at {report['offered_per_s']:,}/s offered, ms", "",
                  *row("latency_p99_ms", "{:.1f}"), f"≤ {TARGET_P99_MS:.0f}",
                  verdict(report["passed"]["latency"]))
    table.add_row("CPU µs / notification, drain", "", *row("drain_cpu_us", "{:.0f}"), "", "")
    table.add_row(f"CPU µs / notification at {report['offered_per_s']:,}/s", "",
                  *row("steady_cpu_us", "{:.0f}"), "", "")
    table.caption = (
        f"result: the {report['topology']} topology · ratio {report['topology']} / raw"
        f" {report['ratio']:.3f} · Redis {report['redis_version']} · Python"
        f" {report['python_version']} · {report['cpus']} CPUs · {report['partitions']}"
        f" partitions a topic · {report['repeats']} runs ·"
        f" {report['seconds']}s · PostgreSQL alone: INSERT + COMMIT"
        f" {report['postgres_commit_ms']:.2f} ms, {report['postgres_rows_per_s']:,.0f} rows/s"
        " in 500-row INSERTs"
    )
    console.print(table)


async def pipeline_command(
    settings: Settings, counts: Counts, json_output: bool, out: Console, err: Console
) -> None:
    report = await run_with_progress(
        lambda step: run_pipeline_bench(settings, counts, step), _steps(counts),
        "starting", err,
    )
    emit(report, json_output, out, render)
