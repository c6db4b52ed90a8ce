"""`tidings dlq …`: list, show, replay and purge the dead letters kept in PostgreSQL.

`tidings.cli` registers this sub-app, so its helpers (settings, run, consoles) are looked up
when a command runs rather than imported here.
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tidings import terminal

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tidings.dlq.edits import Edit
    from tidings.dlq.store import DeadLetters, Selection

dlq_cli = typer.Typer(
    help="Dead letters: messages an agent gave up on, kept in PostgreSQL to inspect, edit and"
    " replay. A worker records them from the dead-letter streams.",
    no_args_is_help=True,
)

Ids = Annotated[list[int] | None, typer.Argument(
    help="Dead-letter ids (see `dlq list`).", min=1, max=2**63 - 1)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="Only this topic.")]
KindOpt = Annotated[
    str | None,
    typer.Option("--kind", help="Only this kind: rejected, invalid, poison, exhausted, permanent."),
]
FilterOpt = Annotated[
    str | None,
    typer.Option("--filter", metavar="EXPR", help=(
        "Terms FIELD OP VALUE joined by 'and'; OP is = != or ~ (case-insensitive substring)."
        " Fields: topic group kind error_type error fingerprint state key message_id priority"
        " stream id partition attempts replays headers.NAME payload.PATH. Example:"
        " \"kind=exhausted and error_type~Timeout and payload.recipient.user_id=u-42\""
    )),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter.")]


def _cli() -> Any:
    from tidings import cli

    return cli



def _run(body: Callable[[DeadLetters, Redis | None], Awaitable[None]], *,
         redis: bool = False) -> None:
    """Open the database (checked to be migrated) and, if asked, Redis; run ``body``."""
    cli = _cli()

    async def main() -> None:
        from tidings.connections import connect_redis, open_database, resolve_redis_url
        from tidings.dlq.store import DeadLetters
        from tidings.migrate import check_current

        config = cli.settings()
        engine = await open_database(config)
        client = None
        try:
            await check_current(engine, config.database_schema)
            if redis:
                client = await connect_redis(await resolve_redis_url(config), config)
            await body(DeadLetters(engine), client)
        finally:
            if client is not None:
                await client.aclose(close_connection_pool=True)
            await engine.dispose()

    cli.run(main())


def _selection(
    ids: list[int] | None, everything: bool, topic: str | None, kind: str | None,
    expression: str | None, **more: Any,
) -> Selection:
    from tidings.dlq.filters import parse
    from tidings.dlq.store import Selection
    from tidings.errors import TidingsError
    from tidings.tables.dead_letters import DEAD_KINDS

    try:
        if kind is not None and kind not in DEAD_KINDS:
            from tidings.errors import ConfigurationError

            raise ConfigurationError(f"--kind {kind!r}: use one of {', '.join(DEAD_KINDS)}")
        return Selection(ids=tuple(ids or ()), everything=everything, topic=topic, kind=kind,
                         filter=parse(expression) if expression else None, **more)
    except TidingsError as exc:
        terminal.fail(exc)


def _age(option: str, text: str | None) -> Any:
    from tidings.errors import TidingsError
    from tidings.scheduling.calendar import parse_duration

    try:
        return parse_duration(text) if text else None
    except TidingsError as exc:
        terminal.fail(f"{option}: {exc}")


def _json(data: Any) -> None:
    import orjson

    terminal.out.print_json(orjson.dumps(data).decode())



@dlq_cli.command("list")
def list_letters(
    topic: TopicOpt = None, kind: KindOpt = None, expression: FilterOpt = None,
    state: Annotated[
        str | None, typer.Option("--state", help="dead (not replayed yet) or replayed.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only those failed within this age, e.g. 2h.")
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="'error': one row per error fingerprint.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    json_output: Json = False,
) -> None:
    """List dead letters, newest first, or grouped by error with --group-by error."""
    if group_by not in (None, "error"):
        terminal.fail(f"--group-by {group_by!r}: the one grouping is 'error'")
    selection = _selection(None, False, topic, kind, expression, state=state,
                           since=_age("--since", since))

    async def body(store: DeadLetters, _: Redis | None) -> None:
        from tidings.dlq import render

        if group_by:
            groups = await store.groups(selection, limit)
            _json(groups) if json_output else render.groups(terminal.out, groups)
        else:
            letters = await store.find(selection, limit)
            _json(letters) if json_output else render.letters(terminal.out, letters)

    _run(body)


@dlq_cli.command()
def show(
    dead_letter_id: Annotated[int, typer.Argument(
        metavar="ID", help="The dead letter's id.", min=1, max=2**63 - 1)],
    json_output: Json = False,
) -> None:
    """Everything about one dead letter: payload, headers, error history and its replays."""

    async def body(store: DeadLetters, _: Redis | None) -> None:
        from tidings.dlq import render

        letter = await store.show(dead_letter_id)
        _json(letter) if json_output else render.letter(terminal.out, letter)

    _run(body)


@dlq_cli.command()
def replay(
    ids: Ids = None, everything: AllOpt = False, topic: TopicOpt = None, kind: KindOpt = None,
    expression: FilterOpt = None,
    edits: Annotated[list[str] | None, typer.Option("--set", metavar="FIELD.PATH=VALUE", help=(
        "Edit the payload first (repeatable). VALUE is JSON when it parses, else a string; a"
        " missing key is created. Recorded in the replay's audit row."
    ))] = None,
    rate: Annotated[
        str | None, typer.Option("--rate", metavar="N/s", help="At most N replays a second.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=(
        "Replay letters already replayed, and resend deliveries the ledger has as sent."
    ))] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")
    ] = False,
    by: Annotated[
        str | None, typer.Option("--by", help="Who replays, for the audit (default: OS user).")
    ] = None,
    json_output: Json = False,
) -> None:
    """Send dead letters again, to the agent that gave up on them only, each exactly once."""
    from tidings.dlq.edits import parse_edit
    from tidings.errors import TidingsError

    selection = _selection(ids, everything, topic, kind, expression,
                           state=None if force or ids else "dead")
    if selection.empty:
        terminal.fail("say which letters: IDs, --all, --topic, --kind or --filter")
    try:
        changes = [parse_edit(e) for e in edits or ()]
        per_second = _rate(rate)
    except TidingsError as exc:
        terminal.fail(exc)

    async def body(store: DeadLetters, client: Redis | None) -> None:
        from tidings.dlq.replay import Replayer

        chosen = await store.ids(selection)  # the ids given, if any, as narrowed by the rest
        assert client is not None  # asked for with redis=True
        replayer = Replayer(store.engine, client, _cli().settings().namespace,
                            by=by or getpass.getuser())
        if dry_run:
            await _preview(replayer, chosen, changes, force, json_output)
        else:
            await _replay(replayer, chosen, changes, force, per_second, json_output)

    _run(body, redis=True)


def _rate(text: str | None) -> float | None:
    from tidings.errors import ConfigurationError

    if text is None:
        return None
    number = text.strip().lower().removesuffix("/s")
    try:
        value = float(number)
    except ValueError:
        value = 0.0
    if not 0.001 <= value <= 1_000_000:  # (NaN fails too)
        raise ConfigurationError(f"--rate {text!r}: write a number a second from 0.001 to"
                                 " 1000000, e.g. 20/s")
    return value


async def _preview(replayer: Any, ids: list[int], edits: list[Edit], force: bool,
                   as_json: bool) -> None:
    from tidings.dlq import render
    from tidings.errors import TidingsError

    plans: list[dict[str, Any]] = []
    for dead_letter_id in ids:
        try:
            plans.append(await replayer.preview(dead_letter_id, edits, force=force))
        except TidingsError as exc:
            plans.append({"id": dead_letter_id, "error": str(exc)})
    _json(plans) if as_json else render.plans(terminal.out, plans)


async def _replay(replayer: Any, ids: list[int], edits: list[Edit], force: bool,
                  rate: float | None, as_json: bool) -> None:
    from tidings.dlq import render

    with render.progress(terminal.err, len(ids), quiet=as_json) as advance:
        outcomes = await replayer.replay(ids, edits, force=force, rate=rate, progress=advance)
    results = [o.as_json() if hasattr(o, "as_json") else {"id": i, "error": str(o)}
               for i, o in zip(ids, outcomes, strict=True)]
    _json(results) if as_json else render.replays(terminal.out, results)
    if any("error" in r for r in results):
        raise typer.Exit(1)


@dlq_cli.command()
def purge(
    ids: Ids = None, everything: AllOpt = False, topic: TopicOpt = None, kind: KindOpt = None,
    expression: FilterOpt = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only those last failed before, e.g. 30d.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters for good (their replay audit stays); asks first unless --yes."""
    selection = _selection(ids, everything, topic, kind, expression,
                           older_than=_age("--older-than", older_than))
    if selection.empty:
        terminal.fail("say which letters: IDs, --all, --topic, --kind, --filter, --older-than")

    async def body(store: DeadLetters, _: Redis | None) -> None:
        from tidings.dlq.store import Selection

        out = terminal.out
        # Exactly the letters counted (and confirmed): not those that arrive meanwhile.
        chosen = await store.ids(selection)
        if not chosen:
            out.print("no dead letter matches: nothing purged")
            return
        if not yes and not typer.confirm(f"Purge {len(chosen)} dead letter(s) for good?"):
            terminal.err.print("nothing purged")
            raise typer.Exit(1)
        purged = await store.purge(Selection(ids=tuple(chosen)))
        out.print(f"purged {purged} dead letter(s)")

    _run(body)
