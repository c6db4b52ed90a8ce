"""What every `tidings bench …` command shares: a progress bar, quiet logs while agents start and
stop, the report as a table or one JSON object, versions for the report, key clean-up."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import orjson
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

_PASS = Text("pass", style="green")
_FAIL = Text("FAIL", style="bold red")

Step = Callable[[str, int], None]
Report = dict[str, Any]


async def run_with_progress(
    runner: Callable[[Step], Awaitable[Report]], total: int, first: str, err: Console
) -> Report:
    """Run ``runner(step)`` under a progress bar on ``err``; tidings' INFO logs are muted
    meanwhile (each run starts and stops agents, which is noise here)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    quiet = logging.getLogger("tidings")
    level = quiet.level
    if not quiet.isEnabledFor(logging.DEBUG):
        quiet.setLevel(logging.WARNING)
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(first, total=total)

            def step(label: str, done: int) -> None:
                progress.update(task, description=label, completed=done)

            return await runner(step)
    finally:
        quiet.setLevel(level)


def emit(report: Report, json_output: bool, out: Console,
         render: Callable[[Report, Console], None]) -> None:
    """One JSON object for machines, else the rendered table."""
    if json_output:
        out.print(orjson.dumps(report).decode(), soft_wrap=True, markup=False, highlight=False)
    else:
        render(report, out)


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def drop_keys(client: Redis, namespace: str) -> int:
    """Delete every key of ``namespace`` (SCAN, never FLUSHDB); return how many went."""
    doomed = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
    for low in range(0, len(doomed), 500):
        await client.delete(*doomed[low:low + 500])
    return len(doomed)


def verdict(passed: bool) -> Text:
    """A target met or not, for a results table."""
    return _PASS if passed else _FAIL
