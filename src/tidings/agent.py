"""Agents: an async handler bound to a topic, consumed through a Redis Streams consumer group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tidings.retry import RetryPolicy
from tidings.topic import Topic

T = TypeVar("T")

Handler = Callable[[Any], Awaitable[None]]


@dataclass
class AgentStats:
    """Counts kept by one agent in one process (exported as metrics by the worker)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    invalid: int = 0
    poison: int = 0
    exhausted: int = 0
    permanent: int = 0
    reclaimed: int = 0
    deleted: int = 0
    trimmed: int = 0

    @property
    def dead_lettered(self) -> int:
        return self.rejected + self.invalid + self.poison + self.exhausted + self.permanent


@dataclass
class Agent(Generic[T]):
    """A handler for one topic. Its name is its consumer group: one group, many processes.

    ``concurrency`` is how many handler calls run at once per partition; messages with the
    same key always run one after another, in order. A ``batch`` agent's handler gets each
    read batch whole, as a :class:`tidings.batch.Batch` (concurrency does not apply).
    ``retry`` overrides the retry policy of the agent's queue (see :mod:`tidings.retry`).
    """

    name: str
    topic: Topic[T]
    handler: Handler
    concurrency: int = 1
    batch: bool = False
    retry: RetryPolicy | None = None
    stats: AgentStats = field(default_factory=AgentStats)

    @property
    def group(self) -> str:
        return self.name

    async def __call__(self, message: Any) -> None:
        await self.handler(message)
