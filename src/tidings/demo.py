"""`tidings demo`: the notification pipeline end to end, on the embedded or configured servers.

It starts the pipeline's worker, a scheduler loop and the local provider capture servers in
this process, seeds templates and preferences, publishes a realistic mix of notifications and
waits until each has reached a final state (or is delayed), then reads the summary from the
ledger in PostgreSQL. Each run uses its own Redis namespace and database schema and removes
them afterwards; embedded servers it had to start are stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import demo_data, embedded
from tidings.app import App
from tidings.bench.running import drop_keys
from tidings.capture.local import LocalProviders
from tidings.connections import open_database
from tidings.database import quote_ident
from tidings.errors import TidingsError
from tidings.migrate import upgrade
from tidings.notification import Channel
from tidings.pipelines.notifications import CHANNELS, NotificationPipeline, ProviderFactory
from tidings.pipelines.preferences import PreferenceStore
from tidings.pipelines.templates import TemplateStore
from tidings.scheduling.scheduler import Scheduler
from tidings.settings import Settings
from tidings.sinks.base import Provider
from tidings.sinks.providers import build_providers
from tidings.worker import Worker

PUBLISH_BATCH = 500
STATES = ("sent", "filtered", "delayed", "failed")

_BY_CHANNEL = text("""
SELECT d.channel, d.state, count(*) AS n
FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id
WHERE m.topic = 'notifications'
GROUP BY d.channel, d.state
""")
# End to end: accepted (the envelope's creation) to the provider's acceptance; notifications
# scheduled ahead on purpose are left out, they wait by design.
_LATENCY = text("""
SELECT d.channel,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
FROM (SELECT d.channel, extract(epoch FROM d.sent_at - m.created_at) * 1000 AS ms
      FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id
      WHERE d.state = 'sent' AND m.payload->>'send_at' IS NULL) AS d
GROUP BY ROLLUP (d.channel)
""")
_TOTALS = text("""
SELECT count(*) AS messages,
       count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id)
                        OR EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id
                                   AND d.state = 'accepted')) AS unfinished,
       extract(epoch FROM (SELECT max(updated_at) FROM deliveries) - min(m.created_at))
           AS seconds
FROM messages AS m WHERE m.topic = 'notifications'
""")
_FAILURES = text("""
SELECT channel, last_error, count(*) AS n FROM deliveries WHERE state = 'failed'
GROUP BY channel, last_error ORDER BY n DESC, channel LIMIT 6
""")
_SCHEDULER_BUSY = text("""
SELECT (SELECT count(*) FROM schedules WHERE state = 'active' AND next_fire_at <= now())
     + (SELECT count(*) FROM outbox)
""")


@dataclass
class Run:
    """The servers and tasks one demo run started, to be stopped in reverse."""

    settings: Settings
    engine: AsyncEngine
    local: LocalProviders
    pipeline: NotificationPipeline
    worker: Worker | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_scheduler: asyncio.Event = field(default_factory=asyncio.Event)


def demo_settings(settings: Settings) -> Settings:
    """The settings with a namespace and schema of this run's own."""
    suffix = uuid.uuid4().hex[:8]
    return settings.model_copy(update={
        "namespace": f"{settings.namespace}-demo-{suffix}",
        "database_schema": f"{settings.database_schema}_demo_{suffix}",
        "block_ms": 100,  # a quick shutdown; idle reads are not on the hot path
    })


def _providers(local: LocalProviders) -> ProviderFactory:
    async def build(app: App) -> dict[Channel, Provider]:
        # A few connections suffice: the capture server shares this process's one core.
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=8))

        async def close(_: App) -> None:
            await client.aclose()

        app.on_stop(close)
        return build_providers(local.settings, client, tls_context=local.client_tls)

    return build


async def run_demo(
    settings: Settings, count: int, *, progress: Progress | None = None, seed: int = 0,
    timeout_s: float | None = None, keep: bool = False,
) -> dict[str, Any]:
    """Run the demo with ``count`` notifications; return the summary (read from the ledger).

    ``keep`` leaves the run's Redis keys and database schema (named in the summary) in place.
    """
    was_running = {s.name for s in embedded.status(settings.home)}
    config = demo_settings(settings)
    try:
        async with _servers(config, keep) as run:
            summary = await _publish_and_wait(run, count, progress, seed, timeout_s)
    finally:
        _stop_embedded(settings, was_running)
    return summary


@contextlib.asynccontextmanager
async def _servers(config: Settings, keep: bool) -> AsyncIterator[Run]:
    engine = await open_database(config)
    try:
        await upgrade(engine, config.database_schema)
        async with LocalProviders(keep=1000) as local:
            pipeline = NotificationPipeline(
                App("demo"), providers=_providers(local), rules=demo_data.RULES, send_concurrency=4,
            )
            run = Run(config, engine, local, pipeline)
            try:
                yield run
            finally:
                await _stop(run)
    finally:
        if keep:
            await engine.dispose()
        else:
            await _drop(config, engine)


async def _start(run: Run) -> None:
    app = run.pipeline.app
    run.worker = Worker(app, run.settings, name="demo")
    run.tasks.append(asyncio.create_task(run.worker.run()))
    while not run.worker.owners or not app.started:
        await _check(run)
        await asyncio.sleep(0.02)
    scheduler = Scheduler(app, app.engine, name="demo", poll_s=0.25)
    run.tasks.append(asyncio.create_task(scheduler.run(run.stop_scheduler)))


async def _check(run: Run) -> None:
    """Raise what stopped a worker or the scheduler early, instead of waiting forever."""
    for task in run.tasks:
        if task.done():
            await task
            raise TidingsError("a demo task stopped early")


async def _stop(run: Run) -> None:
    run.stop_scheduler.set()
    if run.worker is not None:
        run.worker.request_stop()
    results = await asyncio.gather(*run.tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _drop(config: Settings, engine: AsyncEngine) -> None:
    """Remove this run's schema and Redis keys; the servers stay as they were."""
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(f"DROP SCHEMA IF EXISTS {quote_ident(config.database_schema)} CASCADE"))
    finally:
        await engine.dispose()
    app = App("demo-cleanup")
    await app.start(config)
    try:
        client = Redis.from_url(str(app.redis_url))
        try:
            await drop_keys(client, config.namespace)
        finally:
            await client.aclose()
    finally:
        await app.stop()


def _stop_embedded(settings: Settings, was_running: set[str]) -> None:
    """Stop the embedded servers this run started; leave those that ran before it."""
    from tidings.embedded import postgres_server, redis_server
    from tidings.embedded.home import home_lock, resolve_home

    home = resolve_home(settings.home)
    started = {s.name for s in embedded.status(home)} - was_running
    if not started:
        return
    with home_lock(home):
        if redis_server.NAME in started:
            redis_server.stop(home)
        if postgres_server.NAME in started:
            postgres_server.stop(home)


async def _seed(run: Run, users: int, now: datetime, seed: int) -> demo_data.Population:
    store = TemplateStore(run.engine)
    for t in demo_data.templates():
        await store.put(t.name, t.channel, t.locale, body=t.body, subject=t.subject,
                        title=t.title)
    people = demo_data.population(users, now, seed)
    prefs = PreferenceStore(run.engine)
    for p in people.preferences:
        await prefs.put(p)
    # A provider that answers garbage, and one that fails outright: recorded failures.
    faults = max(1, users // 200)
    run.local.http.fault("sms", status=200, body=b"<html>upstream proxy error</html>",
                         times=faults)
    run.local.http.fault("push", status=200, body=b"not json at all", times=faults)
    return people


async def _publish_and_wait(
    run: Run, count: int, progress: Progress | None, seed: int, timeout_s: float | None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    people = await _seed(run, min(2000, max(40, count // 5)), now, seed)
    batch = demo_data.notifications(count, people, now, seed)
    await _start(run)
    bar = progress.add_task("publishing", total=count) if progress else None
    started = time.perf_counter()
    for low in range(0, count, PUBLISH_BATCH):
        chunk = batch[low:low + PUBLISH_BATCH]
        await run.pipeline.publish_many(chunk)
        if progress is not None and bar is not None:
            progress.advance(bar, len(chunk))
    published_s = time.perf_counter() - started
    await _wait_until_done(run, count, progress, timeout_s or 120 + count / 50)
    elapsed = time.perf_counter() - started
    summary = await ledger_summary(run.engine)
    summary.update(
        notifications=count, seconds=round(elapsed, 2), publish_seconds=round(published_s, 2),
        notifications_per_s=round(count / elapsed, 1),
        users=len(people.recipients), preferences=len(people.preferences),
        namespace=run.settings.namespace, schema=run.settings.database_schema,
        dead_lettered=sum(a.stats.dead_lettered for a in run.pipeline.app.agents.values()),
    )
    return summary


async def _wait_until_done(
    run: Run, count: int, progress: Progress | None, timeout_s: float
) -> None:
    """Until every stream is consumed and acked, the ledger flushed, the scheduler idle,
    and two seconds passed for what was scheduled ahead."""
    app = run.pipeline.app
    intake = app.agents["notify.intake"]
    bar = progress.add_task("routing and delivering", total=count) if progress else None
    deadline = time.monotonic() + timeout_s
    scheduled_done = time.monotonic() + 2.5
    client = Redis.from_url(str(app.redis_url))
    try:
        quiet_checks = 0
        while quiet_checks < 2:  # idle twice in a row: nothing was in flight in between
            if time.monotonic() > deadline:
                raise TidingsError(f"the demo did not finish within {timeout_s:.0f}s")
            await _check(run)
            if progress is not None and bar is not None:
                progress.update(bar, completed=intake.stats.processed)
            await asyncio.sleep(0.1)
            idle = (time.monotonic() > scheduled_done and await _streams_idle(client, app)
                    and await _scheduler_idle(run.engine))
            if idle:
                await run.pipeline.services.ledger.flush()
            quiet_checks = quiet_checks + 1 if idle else 0
    finally:
        await client.aclose()


async def _streams_idle(client: Redis, app: App) -> bool:
    """Every lane of every topic read to its end by each group, and nothing pending."""
    lanes = [lane for topic in app.topics.values() for p in range(topic.partitions)
             for lane in topic.keys(p).lanes]
    for lane in lanes:
        if not await client.exists(lane):
            continue
        last = (await client.xinfo_stream(lane))["last-generated-id"]
        for group in await client.xinfo_groups(lane):
            if group["pending"] or group["last-delivered-id"] != last:
                return False
    return True


async def _scheduler_idle(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return int((await conn.execute(_SCHEDULER_BUSY)).scalar_one()) == 0


async def ledger_summary(engine: AsyncEngine) -> dict[str, Any]:
    """Per channel counts by state, latency percentiles and the commonest failures."""
    async with engine.connect() as conn:
        counts = (await conn.execute(_BY_CHANNEL)).all()
        latency = (await conn.execute(_LATENCY)).all()
        totals = (await conn.execute(_TOTALS)).one()
        failures = (await conn.execute(_FAILURES)).all()
    channels: dict[str, dict[str, Any]] = {
        c: {s: 0 for s in STATES} for c in CHANNELS
    }
    for row in counts:
        channels[row.channel][row.state] = int(row.n)
    all_channels: dict[str, Any] = {s: sum(c[s] for c in channels.values()) for s in STATES}
    for row in latency:
        target = all_channels if row.channel is None else channels[row.channel]
        target["latency_p50_ms"] = round(float(row.p50), 1)
        target["latency_p99_ms"] = round(float(row.p99), 1)
    return {
        "channels": channels,
        "total": all_channels,
        "ledger_messages": int(totals.messages),
        "unfinished": int(totals.unfinished),
        "ledger_seconds": round(float(totals.seconds or 0), 2),
        "failures": [{"channel": r.channel, "reason": r.last_error, "count": int(r.n)}
                     for r in failures],
    }


def render(summary: dict[str, Any], console: Console) -> None:
    """The summary as rich tables."""
    table = Table(title=f"tidings demo: {summary['notifications']:,} notifications"
                        " (from the ledger)")
    for column in ("channel", *STATES, "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    rows = [*summary["channels"].items(), ("all", summary["total"])]
    for name, row in rows:
        table.add_row(name, *(f"{row[s]:,}" for s in STATES),
                      *(f"{row[k]:.1f}" if k in row else "-"
                        for k in ("latency_p50_ms", "latency_p99_ms")))
    table.caption = (
        f"{summary['notifications_per_s']:,.0f} notifications/s over {summary['seconds']}s"
        f" · {summary['users']:,} users, {summary['preferences']:,} with preferences"
        " · most traffic on webhook / push / SMS; SMTP (STARTTLS) is the slow channel"
        " · published in one burst, so latency (accepted → provider accepted) includes queueing"
    )
    console.print(table)
    if summary["failures"]:
        failures = Table(title="commonest failures (recorded, never dropped)")
        for column in ("channel", "reason", "count"):
            failures.add_column(column, justify="right" if column == "count" else "left")
        for f in summary["failures"]:
            failures.add_row(f["channel"], f["reason"], f"{f['count']:,}")
        console.print(failures)
    if summary["unfinished"] or summary["dead_lettered"]:
        console.print(f"[bold red]{summary['unfinished']} unfinished,"
                      f" {summary['dead_lettered']} dead-lettered[/]")


async def demo_command(settings: Settings, count: int, json_output: bool, keep: bool,
                       out: Console, err: Console) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    # The worker's, the HTTP client's and the SMTP server's INFO lines would break the bars.
    loggers = [logging.getLogger(name) for name in ("tidings", "httpx", "mail.log")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if not logger.isEnabledFor(logging.DEBUG):
            logger.setLevel(logging.ERROR)
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            summary = await run_demo(settings, count, progress=progress, keep=keep)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if json_output:
        out.print(orjson.dumps(summary).decode(), soft_wrap=True, markup=False, highlight=False)
    else:
        render(summary, out)
        if keep:
            out.print(f"kept: Redis namespace {summary['namespace']!r}, database schema"
                      f" {summary['schema']!r}")
    if summary["unfinished"] or summary["dead_lettered"]:
        raise TidingsError("some notifications did not reach a final state")
