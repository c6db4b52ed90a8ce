"""``--set field.path=value``: edits applied to a dead letter's JSON payload before a replay.

The value is JSON when it parses as JSON (``42``, ``true``, ``{"a": 1}``, ``"quoted"``), else
the text as a string. A missing key is created, intermediate objects included (like jq's
``setpath``); a list element is addressed by its index and must exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tidings.database import holds_nul
from tidings.errors import ConfigurationError


class EditError(ConfigurationError):
    """An edit that is malformed or cannot apply to the payload."""


@dataclass(frozen=True, slots=True)
class Edit:
    """Set the value at ``path`` (keys, or list indices) of the payload."""

    path: tuple[str, ...]
    value: Any

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @classmethod
    def named(cls, name: str, value: Any) -> Edit:
        """The edit whose :attr:`name` is ``name`` (as a replay's audit row records it)."""
        return cls(tuple(name.split(".")), value)


def parse_edit(text: str) -> Edit:
    """``recipient.user_id=u-42`` (a leading ``payload.`` is allowed and ignored)."""
    name, sep, raw = text.partition("=")
    name = name.strip().removeprefix("payload.")
    path = tuple(name.split("."))
    if not sep or not name or "" in path:
        raise EditError(
            f"--set {text!r}: write FIELD.PATH=VALUE, e.g. --set recipient.user_id=u-42"
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    if "\x00" in text or holds_nul(orjson.dumps(value)):
        raise EditError(f"--set {name}: the value holds a NUL character (\\u0000), which"
                        " PostgreSQL cannot store (the replay's audit row keeps every edit)")
    return Edit(path, value)


def apply_edits(payload: bytes | None, edits: Sequence[Edit]) -> bytes | None:
    """The payload with ``edits`` applied; unchanged bytes when there are none."""
    if not edits:
        return payload
    not_json = EditError(
        "the payload is not JSON, so --set cannot edit it: replay it without --set"
    )
    if payload is None:
        raise not_json
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise not_json from None
    for edit in edits:
        document = _set(document, edit)
    return orjson.dumps(document)


def _set(document: Any, edit: Edit) -> Any:
    node = document
    for depth, part in enumerate(edit.path):
        where = ".".join(edit.path[: depth + 1])
        if isinstance(node, dict):
            if depth == len(edit.path) - 1:
                node[part] = edit.value
                return document
            node = node.setdefault(part, {})
        elif isinstance(node, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise EditError(f"--set {edit.name}: {where} is not an index of that list")
            if depth == len(edit.path) - 1:
                node[int(part)] = edit.value
                return document
            node = node[int(part)]
        else:
            kind = type(node).__name__ if node is not None else "null"
            raise EditError(f"--set {edit.name}: cannot set {where!r} inside a {kind} value")
    return document  # not reached: a path has at least one part
