"""`tidings demo`: the notification pipeline end to end, on the embedded or configured servers.

It starts the pipeline's worker, a scheduler loop and the local provider capture servers in
this process, seeds templates and preferences, makes the capture servers fail now and then,
publishes a realistic mix of notifications and waits until each has reached a final state —
sent, filtered, delayed or dead (dead-lettered) — with every retry done, then reads the summary
from the ledger in PostgreSQL. Each run uses its own Redis namespace and database schema and
removes them afterwards; embedded servers it had to start are stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import demo_data, embedded
from tidings.agent import AgentStats
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
from tidings.retry import RetryPolicies
from tidings.scheduling.scheduler import Scheduler
from tidings.settings import Settings
from tidings.sinks.base import Provider
from tidings.sinks.providers import build_providers
from tidings.worker import Worker

PUBLISH_BATCH = 500
STATES = ("sent", "filtered", "delayed", "dead")
"""The final states of a delivery leg, as the summary counts them."""
NOT_FINAL = ("accepted", "sending", "failed")
"""States no leg should be left in once the demo is done (counted as ``not_final``)."""
DEAD_KINDS = ("permanent", "exhausted", "rejected", "invalid", "poison")

# 'retried': legs that took more than one attempt, whatever their final state.
_BY_CHANNEL = text("""
SELECT d.channel, d.state, count(*) AS n, count(*) FILTER (WHERE d.attempts > 1) AS retried
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
                                   AND d.state IN ('accepted', 'sending', 'failed')))
           AS unfinished,
       extract(epoch FROM (SELECT max(updated_at) FROM deliveries) - min(m.created_at))
           AS seconds
FROM messages AS m WHERE m.topic = 'notifications'
""")
# Why legs died or needed a retry (a leg sent at last keeps its last error).
_FAILURES = text("""
SELECT channel, CASE WHEN state = 'sent' THEN 'retried, sent' ELSE state END AS outcome,
       last_error, count(*) AS n
FROM deliveries
WHERE last_error IS NOT NULL AND (state IN ('dead', 'accepted', 'sending', 'failed')
                                  OR attempts > 1)
GROUP BY 1, 2, 3 ORDER BY n DESC, channel, outcome LIMIT 8
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
    faults: list[demo_data.InjectedFault] = field(default_factory=list)
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
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=8),
                                   timeout=httpx.Timeout(5.0, read=demo_data.READ_TIMEOUT_S))

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
            app = App("demo")
            # By type ('**': every type), as that beats the seeded queues' own policies.
            app.retry_policies = RetryPolicies(default=demo_data.RETRY,
                                               by_type={"**": demo_data.RETRY})
            pipeline = NotificationPipeline(
                app, providers=_providers(local), rules=demo_data.RULES, send_concurrency=4,
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


async def _seed(run: Run, users: int, count: int, now: datetime,
                seed: int) -> demo_data.Population:
    store = TemplateStore(run.engine)
    for t in demo_data.templates():
        await store.put(t.name, t.channel, t.locale, body=t.body, subject=t.subject,
                        title=t.title)
    people = demo_data.population(users, now, seed)
    prefs = PreferenceStore(run.engine)
    for p in people.preferences:
        await prefs.put(p)
    run.faults = demo_data.inject_faults(run.local.http, count)
    return people


async def _publish_and_wait(
    run: Run, count: int, progress: Progress | None, seed: int, timeout_s: float | None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    people = await _seed(run, min(2000, max(40, count // 5)), count, now, seed)
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
    stats = [a.stats for a in run.pipeline.app.agents.values()]
    summary.update(
        notifications=count, seconds=round(elapsed, 2), publish_seconds=round(published_s, 2),
        notifications_per_s=round(count / elapsed, 1),
        users=len(people.recipients), preferences=len(people.preferences),
        namespace=run.settings.namespace, schema=run.settings.database_schema,
        dead_lettered=sum(s.dead_lettered for s in stats),
        dead_letters={kind: sum(getattr(s, kind) for s in stats) for kind in DEAD_KINDS},
        retries_scheduled=sum(s.retried for s in stats),
        retry_policy=demo_data.RETRY.describe(),
        faults=[{"provider": f.endpoint, "fault": f.what, "injected": f.fired}
                for f in run.faults],
    )
    return summary


async def _wait_until_done(
    run: Run, count: int, progress: Progress | None, timeout_s: float
) -> None:
    """Until every stream is consumed and acked, no retry is waiting, the ledger is flushed,
    the scheduler is idle and two seconds passed for what was scheduled ahead."""
    app = run.pipeline.app
    intake = app.agents["notify.intake"]
    bar = progress.add_task("routing and delivering", total=count) if progress else None
    deadline = time.monotonic() + timeout_s
    scheduled_done = time.monotonic() + 2.5
    client = Redis.from_url(str(app.redis_url))
    try:
        quiet_checks = 0
        before = _outcomes(app)
        while quiet_checks < 2:
            if time.monotonic() > deadline:
                raise TidingsError(f"the demo did not finish within {timeout_s:.0f}s")
            await _check(run)
            if progress is not None and bar is not None:
                progress.update(bar, completed=intake.stats.processed)
            await asyncio.sleep(0.1)
            idle = (time.monotonic() > scheduled_done and await _pipeline_idle(client, app)
                    and await _scheduler_idle(run.engine))
            if idle:
                await run.pipeline.services.ledger.flush()
            # One look is not atomic and a retry moves between its delay set and retry stream:
            # idle twice in a row with no handler outcome in between means nothing was in flight.
            after = _outcomes(app)
            quiet_checks = quiet_checks + 1 if idle and after == before else 0
            before = after
    finally:
        await client.aclose()


def _outcomes(app: App) -> list[AgentStats]:
    return [dataclasses.replace(agent.stats) for agent in app.agents.values()]


async def _pipeline_idle(client: Redis, app: App) -> bool:
    """Every agent's lanes read to their end and acked, its delay sets empty and its retry
    streams read and acked — looked at in the order a retried message moves (lane, delay set,
    retry stream), so one moving on while we look is seen in its next place, never missed."""
    for agent in app.agents.values():
        group = agent.group
        for partition in range(agent.topic.partitions):
            keys = agent.topic.keys(partition)
            for lane in keys.lanes:
                if await _busy(client, lane, group):
                    return False
            if await client.zcard(keys.delayed(group)):
                return False
            if await _busy(client, keys.retry(group), group):
                return False
    return True


async def _busy(client: Redis, stream: str, group: str) -> bool:
    """Entries of ``stream`` that ``group`` has pending or not read yet."""
    if not await client.exists(stream):
        return False
    for info in await client.xinfo_groups(stream):
        if info["name"].decode() == group:
            if info["pending"]:
                return True
            unread = await client.xrange(stream, min=b"(" + info["last-delivered-id"], count=1)
            return bool(unread)
    return bool(await client.xlen(stream))  # no group yet: anything in it is unread


async def _scheduler_idle(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return int((await conn.execute(_SCHEDULER_BUSY)).scalar_one()) == 0


async def ledger_summary(engine: AsyncEngine) -> dict[str, Any]:
    """Per channel: legs by final state, legs retried, legs not final, latency percentiles;
    and the commonest failure reasons."""
    async with engine.connect() as conn:
        counts = (await conn.execute(_BY_CHANNEL)).all()
        latency = (await conn.execute(_LATENCY)).all()
        totals = (await conn.execute(_TOTALS)).one()
        failures = (await conn.execute(_FAILURES)).all()
    columns = (*STATES, "retried", "not_final")
    channels: dict[str, dict[str, Any]] = {c: dict.fromkeys(columns, 0) for c in CHANNELS}
    for row in counts:
        channel = channels[row.channel]
        channel["not_final" if row.state in NOT_FINAL else row.state] += int(row.n)
        channel["retried"] += int(row.retried)
    all_channels: dict[str, Any] = {k: sum(c[k] for c in channels.values()) for k in columns}
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
        "failures": [{"channel": r.channel, "outcome": r.outcome, "reason": r.last_error,
                      "count": int(r.n)} for r in failures],
    }


def render(summary: dict[str, Any], console: Console) -> None:
    """The summary as rich tables."""
    table = Table(title=f"tidings demo: {summary['notifications']:,} notifications"
                        " (from the ledger)")
    columns = (*STATES, "retried")
    for column in ("channel", *columns, "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    rows = [*summary["channels"].items(), ("all", summary["total"])]
    for name, row in rows:
        table.add_row(name, *(f"{row[c]:,}" for c in columns),
                      *(f"{row[k]:.1f}" if k in row else "-"
                        for k in ("latency_p50_ms", "latency_p99_ms")))
    table.caption = (
        f"{summary['notifications_per_s']:,.0f} notifications/s over {summary['seconds']}s"
        f" · {summary['users']:,} users, {summary['preferences']:,} with preferences"
        " · counts are delivery legs (one per channel and address); retried: legs that needed"
        " more than one attempt, also counted in their final state"
        " · most traffic on webhook / push / SMS; SMTP (STARTTLS) is the slow channel"
        " · published in one burst, so latency (accepted → provider accepted) includes queueing"
    )
    console.print(table)
    faults = ", ".join(f"{f['provider']} {f['fault']} x{f['injected']}"
                       for f in summary["faults"] if f["injected"])
    console.print(f"injected faults: {faults or 'none fired'}; retry policy:"
                  f" {summary['retry_policy']} (the demo's own, for every type);"
                  f" {summary['retries_scheduled']:,} retries scheduled")
    dead = summary["dead_letters"]
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in dead.items()
                      if n or kind in ("permanent", "exhausted"))
    unexpected = summary["dead_lettered"] - dead["permanent"]
    console.print(f"dead letters: {summary['dead_lettered']:,} ({kinds}) — permanent: the"
                  " invalid numbers and unregistered tokens in the data"
                  + (f"; {unexpected:,} more than those, which no injected fault explains"
                     " (each strikes a leg once)" if unexpected else "")
                  + "; inspect them with `tidings dlq`")
    if summary["failures"]:
        failures = Table(title="commonest failure reasons (recorded, never dropped)")
        for column in ("channel", "outcome", "reason", "legs"):
            failures.add_column(column, justify="right" if column == "legs" else "left")
        for f in summary["failures"]:
            failures.add_row(f["channel"], f["outcome"], f["reason"], f"{f['count']:,}")
        console.print(failures)
    not_final = summary["total"]["not_final"]
    if summary["unfinished"] or not_final:
        console.print(Text(f"{summary['unfinished']} notifications unfinished:"
                           f" {not_final} legs left in {' / '.join(NOT_FINAL)}",
                           style="bold red"))


def _only_critical(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


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
    # So would the capture server's traceback for each request whose client timed out (an
    # injected fault: the client is gone when it reads the body). A filter, as uvicorn sets
    # this logger's level itself when the server starts.
    server_log = logging.getLogger("uvicorn.error")
    server_log.addFilter(_only_critical)
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            summary = await run_demo(settings, count, progress=progress, keep=keep)
    finally:
        server_log.removeFilter(_only_critical)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if json_output:
        out.print(orjson.dumps(summary).decode(), soft_wrap=True, markup=False, highlight=False)
    else:
        render(summary, out)
        if keep:
            out.print(f"kept: Redis namespace {summary['namespace']!r}, database schema"
                      f" {summary['schema']!r}")
    if summary["unfinished"] or summary["total"]["not_final"]:
        raise TidingsError("some notifications did not reach a final state (sent, filtered,"
                           " delayed or dead): run with --keep and look at their deliveries")
