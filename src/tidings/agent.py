"""Agents: an async handler bound to a topic, consumed through a Redis Streams consumer group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client.metrics_core import Metric

from tidings.observability.histogram import CALL_BOUNDS, Histogram
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
    handler_seconds: Histogram = field(
        default_factory=lambda: Histogram(CALL_BOUNDS), compare=False, repr=False)
    """Duration of each handler call (one per message, or one per batch for a batch agent)."""

    @property
    def dead_lettered(self) -> int:
        return self.rejected + self.invalid + self.poison + self.exhausted + self.permanent


class Collector(Protocol):
    """A prometheus_client collector: what an agent's handler counts beyond its AgentStats."""

    def collect(self) -> Iterable[Metric]: ...


@dataclass
class Agent(Generic[T]):
    """A handler for one topic. Its name is its consumer group: one group, many processes.

    ``concurrency`` is how many handler calls run at once per partition; messages with the
    same key always run one after another, in order. A ``batch`` agent's handler gets each
    read batch whole, as a :class:`tidings.batch.Batch` (concurrency does not apply).
    ``retry`` overrides the retry policy of the agent's queue (see :mod:`tidings.retry`).
    ``collectors``: in-process metrics the handler fills (say, the notification pipeline's
    delivery counts), exported by the ``/metrics`` of a worker that runs the agent.
    """

    name: str
    topic: Topic[T]
    handler: Handler
    concurrency: int = 1
    batch: bool = False
    retry: RetryPolicy | None = None
    stats: AgentStats = field(default_factory=AgentStats)
    collectors: list[Collector] = field(default_factory=list)

    @property
    def group(self) -> str:
        return self.name

    async def __call__(self, message: Any) -> None:
        await self.handler(message)
