"""The dead-letter filter language: ``kind=exhausted and error_type~Timeout and payload.a.b=x``.

Terms ``FIELD OP VALUE`` joined by ``and``; ``=`` and ``!=`` compare exactly, ``~`` is a
case-insensitive substring. Column and ``headers.NAME`` terms compile to SQL. ``payload.PATH``
terms are matched in Python after SQL has narrowed the rows: the payload is kept as its exact
bytes and need not be JSON (or UTF-8), so a cast in SQL could fail on one bad row.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, and_, func, true

from tidings.errors import ConfigurationError
from tidings.tables.dead_letters import dead_letters

Op = Literal["=", "!=", "~"]
OPS: tuple[Op, ...] = ("!=", "=", "~")  # "!=" first: "=" would match its tail

_D = dead_letters.c
TEXT_FIELDS = {
    "topic": _D.topic, "group": _D.group_name, "kind": _D.kind, "error_type": _D.error_type,
    "error": _D.error_message, "fingerprint": _D.fingerprint, "state": _D.state, "key": _D.key,
    "message_id": _D.message_id, "priority": _D.priority, "stream": _D.stream,
}
INT_FIELDS = {
    "id": _D.id, "partition": _D.partition, "attempts": _D.attempts, "replays": _D.replays,
}
# What each column holds (bigint or integer): a larger literal would be an SQL error.
_INT_LIMITS = {"id": 2**63 - 1, "partition": 2**31 - 1, "attempts": 2**31 - 1,
               "replays": 2**31 - 1}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_BARE = re.compile(r"[^\s\"']+")
_SPACE = re.compile(r"\s*")
_AND = re.compile(r"and(?![A-Za-z0-9_.\-])", re.IGNORECASE)


class FilterError(ConfigurationError):
    """A filter expression that cannot be parsed or names an unknown field."""


@dataclass(frozen=True, slots=True)
class Term:
    """One comparison; ``field`` is a column name, ``headers.NAME`` or ``payload.PATH``."""

    field: str
    op: Op
    value: str
    pos: int = dataclasses.field(default=0, compare=False)

    @property
    def on_payload(self) -> bool:
        return self.field.startswith("payload.")

    def __str__(self) -> str:
        return f"{self.field}{self.op}{quote(self.value)}"


@dataclass(frozen=True, slots=True)
class Filter:
    """Terms that must all hold."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return " and ".join(str(t) for t in self.terms)

    @property
    def payload_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.on_payload)

    def where(self) -> ColumnElement[bool]:
        """The SQL condition of every term except the payload ones (see :meth:`matches`)."""
        return and_(true(), *(_sql(t) for t in self.terms if not t.on_payload))

    def matches_payload(self, payload: bytes | None) -> bool:
        """Whether the payload terms hold; a payload that is not JSON has no fields."""
        terms = self.payload_terms
        if not terms:
            return True
        try:
            document: Any = orjson.loads(payload) if payload is not None else None
        except orjson.JSONDecodeError:
            document = None
        return all(_payload_holds(t, document) for t in terms)


def quote(value: str) -> str:
    """``value`` as the parser reads it back: bare when it can be, else double-quoted."""
    if value and _BARE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def parse(text: str) -> Filter:
    """Parse a filter expression; a mistake raises FilterError naming the position."""
    parser = _Parser(text)
    terms = [parser.term()]
    while not parser.at_end():
        parser.keyword_and()
        terms.append(parser.term())
    return Filter(tuple(terms))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str) -> FilterError:
        got = self.text[self.pos : self.pos + 12]
        found = f"found {got!r}" if got else "the expression ended"
        return FilterError(
            f"filter {self.text!r}: at position {self.pos + 1} expected {expected}, {found}"
            " (write e.g. kind=exhausted and error_type~Timeout and payload.user_id=u-42)"
        )

    def skip_space(self) -> None:
        self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def keyword_and(self) -> None:
        self.skip_space()
        found = _AND.match(self.text, self.pos)
        if found is None:
            raise self.fail("'and' between terms")
        self.pos = found.end()

    def term(self) -> Term:
        self.skip_space()
        start = self.pos
        name = _NAME.match(self.text, self.pos)
        if name is None:
            raise self.fail("a field name (topic, kind, error_type, payload.PATH, …)")
        check_field(name.group(), self.pos + 1)
        self.pos = name.end()
        self.skip_space()
        op = next((o for o in OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            raise self.fail("an operator: =, != or ~")
        self.pos += len(op)
        self.skip_space()
        term = Term(name.group(), op, self.value(), start)
        _check_number(term)
        return term

    def value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            return self.quoted(self.text[self.pos])
        bare = _BARE.match(self.text, self.pos)
        if bare is None:
            raise self.fail("a value (quote it if it has spaces)")
        self.pos = bare.end()
        return bare.group()

    def quoted(self, mark: str) -> str:
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == mark:
                return "".join(chars)
            if char == "\\" and self.pos < len(self.text):
                char = self.text[self.pos]
                self.pos += 1
            chars.append(char)
        raise self.fail(f"a closing {mark}")


def check_field(name: str, position: int) -> None:
    head, _, rest = name.partition(".")
    if name in TEXT_FIELDS or name in INT_FIELDS:
        return
    if head in ("payload", "headers") and rest and "" not in rest.split("."):
        return
    known = ", ".join([*TEXT_FIELDS, *INT_FIELDS, "headers.NAME", "payload.PATH"])
    raise FilterError(f"filter: unknown field {name!r} at position {position}; use one of {known}")


def _check_number(term: Term) -> None:
    if term.field not in INT_FIELDS:
        return
    where = f"(position {term.pos + 1})"
    if term.op == "~":
        raise FilterError(f"filter: {term.field} is a number: use = or !=, not ~ {where}")
    try:
        number = int(term.value)
    except ValueError:
        raise FilterError(
            f"filter: {term.field} compares with a whole number, not {term.value!r} {where}"
        ) from None
    if abs(number) > _INT_LIMITS[term.field]:
        raise FilterError(f"filter: {term.field} is at most {_INT_LIMITS[term.field]:,},"
                          f" not {term.value} {where}")


def _sql(term: Term) -> ColumnElement[bool]:
    if term.field in INT_FIELDS:
        column = INT_FIELDS[term.field]
        number = int(term.value)
        return column == number if term.op == "=" else column != number
    if term.field in TEXT_FIELDS:
        text_column: ColumnElement[Any] = TEXT_FIELDS[term.field]
    else:  # headers.NAME: the envelope's headers, a JSONB object of strings
        text_column = _D.headers.op("->>")(term.field.partition(".")[2])
    if term.op == "=":
        return text_column == term.value
    if term.op == "!=":
        return text_column.is_distinct_from(term.value)
    return func.lower(text_column).contains(term.value.lower(), autoescape=True)


def _payload_holds(term: Term, document: Any) -> bool:
    found, value = _lookup(document, term.field.split(".")[1:])
    shown = (value if isinstance(value, str) else orjson.dumps(value).decode()) if found else None
    if term.op == "=":
        return shown == term.value
    if term.op == "!=":  # an absent field differs from every value, as SQL's IS DISTINCT FROM
        return shown != term.value
    return shown is not None and term.value.lower() in shown.lower()


def _lookup(document: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif (isinstance(document, list) and part.isascii() and part.isdigit()
              and int(part) < len(document)):
            document = document[int(part)]
        else:
            return False, None
    return True, document
