"""Rich tables and the progress bar of `tidings dlq …`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

BAR_FROM = 6  # a handful of replays finish before a bar would be worth drawing


def _short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(iso: str | None) -> str:
    return "-" if iso is None else datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def _ms(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(" ", "milliseconds")
    except (OverflowError, ValueError, OSError):  # a garbage time in a garbage entry
        return str(ms)


def _error(data: dict[str, Any]) -> str:
    kind = data.get("error_type")
    message = data.get("error_message") or data.get("sample_error") or ""
    return _short(f"{kind}: {message}" if kind else message)


def letters(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("id", "topic", "group", "kind", "error", "attempts", "state", "last failed")
    for r in rows:
        table.add_row(str(r["id"]), f"{r['topic']}[{r['partition']}]", r["group"], r["kind"],
                      _error(r), str(r["attempts"]), r["state"], _when(r["last_failed_at"]))
    out.print(table)
    if not rows:
        out.print("no dead letters match")


def groups(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("count", "dead", "kind", "error (latest)", "topics", "first failed",
                  "last failed", "sample id", "fingerprint")
    for r in rows:
        table.add_row(str(r["count"]), str(r["dead"]), r["kind"], _error(r),
                      ", ".join(sorted(r["topics"])), _when(r["first_failed_at"]),
                      _when(r["last_failed_at"]), str(r["sample_id"]), r["fingerprint"])
    out.print(table)
    if not rows:
        out.print("no dead letters match")


_DETAIL = ("id", "state", "replays", "topic", "partition", "group", "kind", "error_type",
           "error_message", "fingerprint", "attempts", "deliveries", "message_id", "key",
           "priority", "stream", "entry_id", "dead_stream", "dead_entry_id", "first_failed_at",
           "last_failed_at", "created_at", "replayed_at")


def letter(out: Console, data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for name in _DETAIL:
        value = data.get(name)
        table.add_row(Text(name, style="bold"), "-" if value is None else str(value))
    out.print(table)
    out.print(Text("headers", style="bold"))
    out.print_json(orjson.dumps(data["headers"]).decode())
    out.print(Text("payload", style="bold"))
    if data["payload_text"] is not None:
        out.print("(not JSON) " + data["payload_text"], highlight=False, markup=False)
    else:
        out.print_json(orjson.dumps(data["payload"]).decode())
    history = Table("attempt", "at", "type", "message", title="error history")
    for e in data["errors"]:
        at = _ms(e["at_ms"])
        history.add_row(str(e.get("attempt", "-")), at, str(e.get("type") or "-"),
                        _short(str(e.get("message", "")), 80))
    out.print(history)
    if data["replay_history"]:
        replays = Table("audit id", "when", "by", "forced", "edits", "stream", "entry id",
                        title="replays")
        for r in data["replay_history"]:
            replays.add_row(str(r["id"]), _when(r["replayed_at"]), r["replayed_by"],
                            "yes" if r["forced"] else "no", orjson.dumps(r["edits"]).decode(),
                            r["target_stream"], r["new_entry_id"] or "-")
        out.print(replays)


def plans(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("id", "topic", "group", "message id", "into stream", "edits", "would",
                  title="dry run: nothing replayed")
    for r in rows:
        if "error" in r:
            refusal = Text(f"refuse: {r['error']}", style="red")
            table.add_row(str(r["id"]), "", "", "", "", "", refusal)
        else:
            table.add_row(str(r["id"]), r["topic"], r["group"], r["message_id"], r["stream"],
                          orjson.dumps(r["edits"]).decode(), "replay")
    out.print(table)


def replays(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("id", "result", "into stream", "entry id", "ledger rows reset")
    for r in rows:
        if "error" in r:
            table.add_row(str(r["id"]), Text("refused", style="red"), "", "", r["error"])
        else:
            table.add_row(str(r["id"]), "replayed", r["stream"], r["entry_id"] or "(earlier)",
                          str(r["deliveries_reset"]))
    out.print(table)
    done = sum(1 for r in rows if "error" not in r)
    out.print(f"replayed {done} of {len(rows)} dead letter(s)")


@contextlib.contextmanager
def progress(err: Console, total: int, *, quiet: bool) -> Iterator[Callable[..., None]]:
    """A bar on stderr for more than a handful of replays; yields the per-item callback."""
    if quiet or total < BAR_FROM:
        yield lambda *_: None
        return
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("replay", total=total)
        yield lambda *_: bar.advance(task)
