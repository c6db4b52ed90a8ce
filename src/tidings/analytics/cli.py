"""`tidings report`, `tidings trace ID` and `tidings maintain`: delivery analytics from
PostgreSQL.

`tidings.cli` registers these commands, so its helpers (settings, run, consoles) are looked up
when a command runs rather than imported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from tidings import terminal
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tidings.analytics.report import Dimension
    from tidings.analytics.retention import Retention

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _cli() -> Any:
    from tidings import cli

    return cli



def _duration(option: str, value: str) -> timedelta:
    from tidings.scheduling.calendar import parse_duration

    try:
        return parse_duration(value)
    except ConfigurationError:
        terminal.fail(f"{option} {value!r} is not a duration: write e.g. '90m', '24h', '7d'")


def _with_engine(body: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    """Open the database (checked to be migrated), run ``body``, close it."""
    cli = _cli()

    async def main() -> None:
        from tidings.connections import open_database
        from tidings.migrate import check_current

        config = cli.settings()
        engine = await open_database(config)
        try:
            await check_current(engine, config.database_schema)
            await body(engine)
        finally:
            await engine.dispose()

    cli.run(main())


def _print_json(document: Any) -> None:
    terminal.out.print_json(orjson.dumps(document).decode())


def report(
    since: Annotated[str, typer.Option(help="Period: the last 90m, 24h, 7d, …")] = "24h",
    by: Annotated[
        str, typer.Option(help="Rows by channel, provider, tenant, type or queue.")
    ] = "channel",
    json_output: Json = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page here.")
    ] = None,
) -> None:
    """Deliveries by outcome, success rate, latency percentiles, trends, failure reasons."""
    from tidings.analytics.report import DIMENSIONS

    if by not in DIMENSIONS:
        terminal.fail(f"--by {by!r} is not one of {', '.join(DIMENSIONS)}")
    period = _duration("--since", since)
    dimension: Dimension = by

    async def body(engine: AsyncEngine) -> None:
        from tidings.analytics.html import report_html
        from tidings.analytics.render import report_renderable
        from tidings.analytics.report import build_report

        built = await build_report(engine, datetime.now(UTC), period, dimension)
        if html is not None:
            try:
                html.write_text(report_html(built), encoding="utf-8")
            except OSError as exc:
                terminal.fail(f"cannot write {html}: {exc.strerror}")
        if json_output:
            _print_json(built.to_json())
        else:
            terminal.out.print(report_renderable(built))
        if html is not None:
            terminal.err.print(f"wrote {html}")

    _with_engine(body)


def trace(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="The notification's id.")],
    json_output: Json = False,
) -> None:
    """One notification's story: acceptance, deliveries, attempts, errors, dead letters."""
    async def body(engine: AsyncEngine) -> None:
        from tidings.analytics.trace import load_trace, trace_renderable

        story = await load_trace(engine, message_id)
        if json_output:
            _print_json(story.to_json())
        else:
            terminal.out.print(trace_renderable(story))

    _with_engine(body)


def maintain(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    every: Annotated[str, typer.Option(help="Time between passes.")] = "60s",
) -> None:
    """Roll delivery events up and delete what is past retention; again every --every.

    Retention in days from TIDINGS_RETENTION_LEDGER_DAYS (30), …_MINUTE_DAYS (7),
    …_HOUR_DAYS (90), …_DAY_DAYS (0: forever); …_BATCH rows per delete (5000).
    """
    from tidings.analytics.retention import Retention as RetentionFromEnv

    interval = _duration("--every", every)
    try:
        retention = RetentionFromEnv.from_env()
    except ConfigurationError as exc:
        terminal.fail(str(exc))

    async def body(engine: AsyncEngine) -> None:
        while True:
            await maintain_once(engine, retention, datetime.now(UTC))
            if once:
                return
            await asyncio.sleep(interval.total_seconds())

    _with_engine(body)


async def maintain_once(engine: AsyncEngine, retention: Retention, now: datetime) -> None:
    """One maintenance pass: roll up, then retention; prints one line."""
    from tidings.analytics.retention import apply_retention
    from tidings.analytics.rollup import roll_up

    rolled = await roll_up(engine, now)
    removed = await apply_retention(engine, retention, now)
    mark = "-" if rolled.watermark is None else f"{rolled.watermark:%Y-%m-%d %H:%M} UTC"
    terminal.out.print(
        f"{now:%H:%M:%S} rolled up {rolled.windows} window(s), {rolled.rows} row(s), "
        f"up to {mark}; removed {removed.messages} messages, {removed.deliveries} deliveries, "
        f"{removed.events} events, {removed.minute}/{removed.hour}/{removed.day} "
        f"minute/hour/day rows, {removed.flushes} stale flush ids", highlight=False,
    )
