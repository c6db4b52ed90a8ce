"""Batch handlers: one call per read batch, per-message outcomes, outputs published before acks.

A batch agent (``@app.agent(topic, batch=True)``) gets a :class:`Batch`. Messages it neither
rejects nor fails are acked when it returns; what it sends with :meth:`Batch.send` is published
in one pipelined round trip *before* those acks, so a crash in between redelivers the input
rather than losing the output (at-least-once across the hop, DESIGN.md D6/D7).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tidings.message import Message, Priority

if TYPE_CHECKING:
    from tidings.topic import Topic

T = TypeVar("T")


class Batch(Generic[T]):
    """The messages of one read, in stream order, and what the handler decided about each."""

    __slots__ = ("_failed", "_rejected", "messages", "outgoing")

    def __init__(self, messages: list[Message[T]]) -> None:
        self.messages = messages
        self.outgoing: list[tuple[str, dict[bytes, bytes]]] = []
        self._rejected: dict[int, str] = {}
        self._failed: dict[int, str] = {}

    def __iter__(self) -> Iterator[Message[T]]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def reject(self, message: Message[T], reason: str) -> None:
        """This message can never succeed: park it in the dead-letter stream."""
        self._rejected[id(message)] = reason

    def fail(self, message: Message[T], reason: str) -> None:
        """This message failed this time: leave it pending so it is redelivered."""
        self._failed[id(message)] = reason

    def outcome(self, message: Message[T]) -> tuple[str, str | None]:
        """("ack" | "reject" | "fail", reason) for one message after the handler returned."""
        key = id(message)
        if key in self._rejected:
            return "reject", self._rejected[key]
        if key in self._failed:
            return "fail", self._failed[key]
        return "ack", None

    def send(
        self,
        topic: Topic[Any],
        value: Any,
        *,
        key: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        headers: dict[str, str] | None = None,
        trace_id: str | None = None,
    ) -> str:
        """Validate now, publish after the handler returns (before the batch is acked)."""
        msg_id, stream, fields = topic.prepare(
            value, key=key, priority=priority, headers=headers, trace_id=trace_id
        )
        self.outgoing.append((stream, fields))
        return msg_id
