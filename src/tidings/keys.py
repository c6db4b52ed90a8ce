"""Every Redis key tidings writes, in one place.

Keys of one topic partition share the hash tag ``{t:TOPIC:P}`` so that one Lua script or one
MULTI touching a partition's lanes, delay set, lease and dead letters stays on one cluster slot,
while the partitions of a topic spread over the slots (DESIGN.md D4).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.message import Priority


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition of one topic."""

    namespace: str
    topic: str
    partition: int

    @property
    def tag(self) -> str:
        return f"{self.namespace}:{{t:{self.topic}:{self.partition}}}"

    def lane(self, priority: Priority) -> str:
        return f"{self.tag}:{priority.value}"

    @property
    def lanes(self) -> tuple[str, str, str]:
        return (self.lane(Priority.HIGH), self.lane(Priority.NORMAL), self.lane(Priority.LOW))

    @property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    def delayed(self, group: str) -> str:
        """Sorted set of one group's retries waiting for their time (score = due, in ms)."""
        return f"{self.tag}:delayed:{group}"

    def retry(self, group: str) -> str:
        """Stream of one group's due retries and replays: read by that group only, so a retry
        never reaches the topic's other agents."""
        return f"{self.tag}:retry:{group}"

    def lease(self, group: str) -> str:
        return f"{self.tag}:lease:{group}"

    def sent(self, message_id: str) -> str:
        """Marker that a message id was already published here (idempotent publishing)."""
        return f"{self.tag}:sent:{message_id}"


def members(namespace: str, topic: str, group: str) -> str:
    """Sorted set of the live consumers of one agent's group (score = expiry in ms)."""
    return f"{namespace}:members:{topic}:{group}"


def topic_registry(namespace: str) -> str:
    """Hash of topic name -> partition count, so tools can find streams without a SCAN."""
    return f"{namespace}:topics"


def breaker(namespace: str, provider: str) -> str:
    """Hash of one provider's circuit breaker (its own hash tag: one slot per breaker)."""
    return f"{namespace}:breaker:{{{provider}}}"


def breaker_registry(namespace: str) -> str:
    """Set of every provider name with a breaker, so tools can list them without a SCAN."""
    return f"{namespace}:breakers"
