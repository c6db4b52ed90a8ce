"""Batch handlers: one call per read batch, per-message outcomes, outputs published before acks.

A batch agent (``@app.agent(topic, batch=True)``) gets a :class:`Batch`. Messages it neither
rejects nor retries are acked when it returns; what it sends with :meth:`Batch.send` is published
in one pipelined round trip *before* those acks, so a crash in between redelivers the input
rather than losing the output (at-least-once across the hop, DESIGN.md D6/D7).

A handler may leave the batch's last piece of work to :meth:`Batch.defer` (e.g. writing its
ledger rows): the consumer then reads and handles the next batch while that work runs, and
publishes and acks this one only once it is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from tidings.message import Message, Priority
from tidings.retry import RetryPolicy

if TYPE_CHECKING:
    from tidings.topic import Topic

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A handler's request to try a message again (see :meth:`Batch.retry`)."""

    reason: str
    delay: float | None = None
    error_type: str | None = None
    policy: RetryPolicy | None = None
    count: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Literal["ack", "reject", "retry"]
    reason: str | None = None
    kind: str = "rejected"
    retry: RetryRequest | None = None


class Batch(Generic[T]):
    """The messages of one read, in stream order, and what the handler decided about each."""

    __slots__ = ("_rejected", "_retries", "deferred", "messages", "outgoing", "targets")

    def __init__(self, messages: list[Message[T]]) -> None:
        self.messages = messages
        self.outgoing: list[tuple[str, dict[bytes, bytes]]] = []
        self.targets: list[Topic[Any]] = []  # the topic of each outgoing entry
        self._rejected: dict[int, tuple[str, str]] = {}
        self._retries: dict[int, RetryRequest] = {}
        self.deferred: Callable[[], Awaitable[None]] | None = None

    def __iter__(self) -> Iterator[Message[T]]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def reject(self, message: Message[T], reason: str, *, kind: str = "rejected") -> None:
        """This message can never succeed: park it in the dead letters (``kind`` says why:
        rejected, permanent, exhausted)."""
        self._rejected[id(message)] = (reason, kind)

    def retry(
        self, message: Message[T], reason: str, *, delay: float | None = None,
        error_type: str | None = None, policy: RetryPolicy | None = None, count: bool = True,
    ) -> None:
        """This message failed this time: try it again after ``delay`` seconds (None: as the
        policy says). Past the policy's attempts or deadline it is dead-lettered instead.
        ``count=False`` waits without using up an attempt (e.g. every provider is
        circuit-broken: the message is not at fault)."""
        self._retries[id(message)] = RetryRequest(reason, delay, error_type, policy, count)

    def outcome(self, message: Message[T]) -> Outcome:
        """What to do with one message after the handler returned."""
        key = id(message)
        if key in self._rejected:
            reason, kind = self._rejected[key]
            return Outcome("reject", reason, kind)
        retry = self._retries.get(key)
        if retry is not None:
            return Outcome("retry", retry.reason, retry=retry)
        return Outcome("ack")

    def defer(self, work: Callable[[], Awaitable[None]]) -> None:
        """Finish the batch with ``work``, run after the handler returns. Its outputs are
        published and its messages acked or retried only once ``work`` is done; meanwhile the
        consumer may read and handle its next batch (one batch at most waits so). If ``work``
        fails, the whole batch stays pending, as if the handler had failed."""
        self.deferred = work

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
        """Validate now, publish after the handler returns (before the batch is acked);
        PayloadError (and nothing queued) if the value does not fit the topic."""
        msg_id, stream, fields = topic.prepare(
            value, key=key, priority=priority, headers=headers, trace_id=trace_id
        )
        self.add(topic, stream, fields)
        return msg_id

    def add(self, topic: Topic[Any], stream: str, fields: dict[bytes, bytes]) -> None:
        """Publish an entry made by :meth:`Topic.prepare` after the handler returns: for a
        handler that prepares every output of a message before it commits to any."""
        self.outgoing.append((stream, fields))
        self.targets.append(topic)
