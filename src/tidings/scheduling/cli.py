"""`tidings schedules …`: add, list, show, update, pause, resume, cancel, purge, preview, run.

`tidings.cli` registers this sub-app, so its helpers (settings, run, consoles) are looked up
when a command runs rather than imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tidings import terminal

if TYPE_CHECKING:
    from tidings.scheduling.calendar import Timing
    from tidings.scheduling.schedule import ScheduleStatus
    from tidings.scheduling.store import Schedules

schedules_cli = typer.Typer(
    help="Schedules: one-shot, interval and cron messages, fired exactly once.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="The schedule's unique name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Cron = Annotated[
    str | None, typer.Option("--cron", help="Cron expression: 5 fields, or 6 with seconds first.")
]
Every = Annotated[str | None, typer.Option("--every", help="Exact interval: 90s, 15m, 1h30m, 2d.")]
At = Annotated[str | None, typer.Option("--at", help="One-shot ISO-8601 time.")]
Zone = Annotated[str | None, typer.Option("--tz", help="IANA time zone [default: UTC].")]
Start = Annotated[str | None, typer.Option("--start", help="ISO time of the first tick or later.")]
End = Annotated[str | None, typer.Option("--end", help="ISO time after which nothing fires.")]
Topic = Annotated[str | None, typer.Option("--topic", help="Topic the message goes to.")]
Payload = Annotated[str | None, typer.Option("--payload", help="The message, as JSON.")]
Key = Annotated[str | None, typer.Option("--key", help="Message key (same key, same order).")]
PriorityOpt = Annotated[str | None, typer.Option("--priority", help="high, normal or low.")]
MaxRuns = Annotated[int | None, typer.Option("--max-runs", min=1, help="Stop after N fires.")]
MisfireOpt = Annotated[
    str | None, typer.Option("--misfire", help="After downtime: fire_once, fire_all or skip.")
]


def _cli() -> Any:
    from tidings import cli

    return cli


def _run_with_store(body: Callable[[Schedules], Awaitable[None]]) -> None:
    """Open the database (checked to be migrated), run ``body``, close it."""
    cli = _cli()

    async def main() -> None:
        from tidings.connections import open_database
        from tidings.migrate import check_current
        from tidings.scheduling.store import Schedules

        config = cli.settings()
        engine = await open_database(config)
        try:
            await check_current(engine, config.database_schema)
            await body(Schedules(engine))
        finally:
            await engine.dispose()

    cli.run(main())



def _timing(
    cron: str | None, every: str | None, at: str | None, tz: str | None, start: str | None,
    end: str | None, base: Timing | None = None,
) -> Timing:
    from tidings.errors import ConfigurationError
    from tidings.scheduling.calendar import Timing, parse_instant, parse_zone

    given = [(k, v) for k, v in (("cron", cron), ("every", every), ("at", at)) if v is not None]
    if len(given) > 1 or (not given and base is None):
        raise ConfigurationError("give exactly one of --cron, --every or --at")
    kind, expression = given[0] if given else (base.kind, base.expression)  # type: ignore[union-attr]
    zone_name = tz or (base.timezone if base else "UTC")
    zone = parse_zone(zone_name)
    begin = parse_instant(start, zone) if start else (base.start if base else None)
    finish = parse_instant(end, zone) if end else (base.end if base else None)
    return Timing.parse(kind, expression, zone_name, begin, finish)


def _payload(text: str) -> Any:
    import orjson

    from tidings.errors import PayloadError

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"--payload is not JSON: {exc}") from None


def _print_status(status: ScheduleStatus, as_json: bool) -> None:
    import orjson

    out = terminal.out
    if as_json:
        out.print_json(orjson.dumps(status.as_json()).decode())
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    for field, value in status.as_json().items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        table.add_row(Text(field, style="bold"), "-" if shown is None else str(shown))
    out.print(table)


@schedules_cli.command()
def add(
    name: Name,
    topic: Annotated[str, typer.Option("--topic", help="Topic the message goes to.")],
    cron: Cron = None, every: Every = None, at: At = None, tz: Zone = None,
    start: Start = None, end: End = None, payload: Payload = None, key: Key = None,
    priority: PriorityOpt = None, max_runs: MaxRuns = None, misfire: MisfireOpt = None,
    json_output: Json = False,
) -> None:
    """Create a schedule, or update the one of that name (the same definition changes nothing)."""
    from tidings.errors import TidingsError
    from tidings.scheduling.schedule import Schedule

    try:  # before connecting: a mistake needs no database to be reported
        schedule = Schedule(
            name=name, timing=_timing(cron, every, at, tz, start, end), topic=topic,
            payload=_payload(payload or "{}"), key=key, priority=priority or "normal",  # type: ignore[arg-type]
            max_runs=max_runs, misfire=misfire or "fire_once",  # type: ignore[arg-type]
        )
    except TidingsError as exc:
        terminal.fail(exc)

    async def body(store: Schedules) -> None:
        _print_status(await store.add(schedule), json_output)

    _run_with_store(body)


@schedules_cli.command()
def update(
    name: Name,
    cron: Cron = None, every: Every = None, at: At = None, tz: Zone = None,
    start: Start = None, end: End = None, topic: Topic = None, payload: Payload = None,
    key: Key = None, priority: PriorityOpt = None, max_runs: MaxRuns = None,
    misfire: MisfireOpt = None, json_output: Json = False,
) -> None:
    """Change some fields of a schedule; a new timing applies from the next tick after now."""
    from tidings.scheduling.store import replace

    async def body(store: Schedules) -> None:
        old = (await store.get(name)).schedule
        changes: dict[str, Any] = {
            "timing": _timing(cron, every, at, tz, start, end, base=old.timing),
            "topic": topic or old.topic,
            "payload": old.payload if payload is None else _payload(payload),
            "key": old.key if key is None else key,
            "priority": priority or old.priority,
            "max_runs": old.max_runs if max_runs is None else max_runs,
            "misfire": misfire or old.misfire,
        }
        _print_status(await store.update(replace(old, **changes)), json_output)

    _run_with_store(body)


def _state_command(verb: str) -> Callable[[str, bool], None]:
    def command(name: Name, json_output: Json = False) -> None:
        async def body(store: Schedules) -> None:
            _print_status(await getattr(store, verb)(name), json_output)

        _run_with_store(body)

    command.__doc__ = {
        "pause": "Stop firing until resumed; ticks that fall meanwhile are not fired.",
        "resume": "Fire again, from the next tick after now.",
        "cancel": "Stop for good (add the name again to bring it back).",
    }[verb]
    return command


for _verb in ("pause", "resume", "cancel"):
    schedules_cli.command(_verb)(_state_command(_verb))


@schedules_cli.command("list")
def list_schedules(
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only these states (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000,
                                       help="Show at most this many, by name.")] = 1000,
    json_output: Json = False,
) -> None:
    """List schedules with their next fire time."""

    async def body(store: Schedules) -> None:
        import orjson
        from rich.table import Table

        found = await store.all(states=state or (), limit=limit + 1)  # type: ignore[arg-type]
        out = terminal.out
        if len(found) > limit:
            found = found[:limit]
            terminal.err.print(f"showing the first {limit:,} schedules by name; there are more:"
                             " raise --limit or narrow with --state")
        if json_output:
            out.print_json(orjson.dumps([s.as_json() for s in found]).decode())
            return
        table = Table("name", "kind", "expression", "zone", "topic", "state", "runs")
        table.add_column("next fire", no_wrap=True)
        for s in found:
            t = s.schedule.timing
            nxt = "-"
            if s.next_fire_at is not None:
                nxt = s.next_fire_at.astimezone(t.zone).isoformat(" ", "seconds")
            table.add_row(s.name, t.kind, t.expression, t.timezone, s.schedule.topic, s.state,
                          str(s.runs), nxt)
        out.print(table)

    _run_with_store(body)


@schedules_cli.command()
def show(
    name: Name,
    fires: Annotated[int, typer.Option("--fires", min=0, max=10_000,
                                       help="Recent fires to show.")] = 10,
    json_output: Json = False,
) -> None:
    """Show one schedule and its recent fires, with how late each was claimed."""

    async def body(store: Schedules) -> None:
        import orjson
        from rich.table import Table

        status = await store.get(name)
        recent = await store.fires(name, fires) if fires else []
        out = terminal.out
        if json_output:
            data = {**status.as_json(), "fires": [f.as_json() for f in recent]}
            out.print_json(orjson.dumps(data).decode())
            return
        _print_status(status, False)
        if recent:
            table = Table("tick", "fired at", "lateness ms", "scheduler", "message id")
            for f in recent:
                table.add_row(f.tick.isoformat(), f.fired_at.isoformat(),
                              f"{f.lateness_ms:.1f}", f.scheduler, f.message_id)
            out.print(table)

    _run_with_store(body)


@schedules_cli.command()
def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age, e.g. 30d: finished schedules and fires.")
    ] = "30d",
) -> None:
    """Delete done / cancelled schedules and fire records older than --older-than."""
    from tidings.errors import TidingsError
    from tidings.scheduling.calendar import parse_duration

    try:
        age = parse_duration(older_than)
    except TidingsError as exc:
        terminal.fail(exc)

    async def body(store: Schedules) -> None:
        schedules, fires = await store.purge(age)
        terminal.out.print(f"purged {schedules} schedule(s) and {fires} fire record(s)")

    _run_with_store(body)


@schedules_cli.command()
def preview(
    cron: Cron = None, every: Every = None, at: At = None, tz: Zone = None,
    start: Start = None, end: End = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="ISO time to start from [default: now].")
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, max=10_000, help="How many.")] = 10,
    json_output: Json = False,
) -> None:
    """Print the next fire times, ISO-8601 with UTC offsets in the schedule's zone, one a line."""
    import orjson

    from tidings.errors import TidingsError
    from tidings.scheduling.calendar import parse_instant

    try:
        timing = _timing(cron, every, at, tz, start, end)
        after = parse_instant(from_, timing.zone) if from_ else datetime.now(UTC)
    except TidingsError as exc:
        terminal.fail(exc)
    times = [t.astimezone(timing.zone).isoformat() for t in timing.upcoming(after, count)]
    if json_output:
        typer.echo(orjson.dumps(times).decode())
    else:
        for t in times:
            typer.echo(t)


@schedules_cli.command("run")
def run_scheduler(
    name: Annotated[str | None, typer.Option(help="Scheduler name [default: host-pid].")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Schedules claimed per tick.")] = 1000,
    poll: Annotated[float, typer.Option(min=0.01, help="Longest sleep between ticks (s).")] = 1.0,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds late before a tick counts as missed.")
    ] = 60.0,
    migrate: Annotated[
        bool, typer.Option(help="Apply pending migrations at start (else refuse to start).")
    ] = True,
    http_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve /metrics and /health/* on this port."),
    ] = None,
) -> None:
    """Run a scheduler until SIGTERM / SIGINT; run several for availability."""
    cli = _cli()

    async def main() -> None:
        from tidings.scheduling.scheduler import serve

        await serve(cli.settings(), name=name, batch=batch, poll_s=poll, grace_s=grace,
                    migrate=migrate, http_port=http_port)

    cli.run(main())
