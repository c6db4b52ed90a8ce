"""The CLI's consoles and its one way to report a mistake: a single ``error:`` line.

Its own module, below every command module: ``tidings.cli`` imports the subcommands, so they
cannot import it back at load time.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

# No markup: what they print holds stored and typed text (error messages, names) that could
# look like rich markup; styles are given as Text.
err = Console(stderr=True, soft_wrap=True, markup=False)
out = Console(markup=False)


def report_error(problem: object) -> None:
    """One line on stderr, "error: " and the problem, whose text is printed as it is: never
    read as rich markup (a stored error such as 'bad header [/]' would break the print)."""
    err.print(Text.assemble(("error:", "bold red"), " ", str(problem)), highlight=False)


def fail(problem: object) -> NoReturn:
    """Report a mistake (one line, see :func:`report_error`) and exit with status 1."""
    report_error(problem)
    raise typer.Exit(1) from None
