"""The provider seam: a Delivery goes in, a SendResult comes out, and nothing is ever raised.

A provider classifies every failure as ``transient`` (worth retrying: timeouts, 429, 5xx, a
dropped connection) or ``permanent`` (retrying cannot help: a bad address, rejected credentials,
a malformed request), with a reason a person can read.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from tidings.notification import Channel, Content, Notification


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a send did not succeed, and whether trying again could help."""

    kind: FailureKind
    reason: str
    code: str | None = None
    """The provider's own error code: ``21211``, ``UNREGISTERED``, ``550``, ``timeout``…"""
    http_status: int | None = None
    smtp_code: int | None = None
    bad_address: bool = False
    """The address itself is dead (unknown number, unregistered device token, 550 mailbox)."""
    retry_after: float | None = None
    """Seconds the provider asked us to wait (``Retry-After``), if it said."""
    maybe_delivered: bool = False
    """The request may have reached the provider (sent, then no reply): sending it again
    could deliver it twice, unless the provider deduplicates by our idempotency key."""

    @property
    def transient(self) -> bool:
        return self.kind is FailureKind.TRANSIENT


TRANSIENT = FailureKind.TRANSIENT
PERMANENT = FailureKind.PERMANENT


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one address over one channel: the unit a provider sends."""

    notification: Notification
    channel: Channel
    address: str
    content: Content
    idempotency_key: str
    """Stable across retries of this leg; passed to providers that accept one."""


def leg_key(notification: Notification, channel: Channel, address: str) -> str:
    """Idempotency key of one leg: the notification's key, the channel and the address."""
    digest = hashlib.blake2s(address.encode(), digest_size=8).hexdigest()
    return f"{notification.idempotency_key}:{channel}:{digest}"


def deliveries(
    notification: Notification, channel: Channel, content: Content
) -> Iterator[Delivery]:
    """One Delivery per address the recipient has on ``channel`` (none if it has none)."""
    for address in notification.recipient.addresses(channel):
        yield Delivery(notification, channel, address, content,
                       leg_key(notification, channel, address))


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one Delivery: sent (with the provider's message id) or a Failure."""

    provider: str
    channel: Channel
    address: str
    idempotency_key: str
    started_at: float
    """Unix time the send began."""
    duration_ms: float
    provider_message_id: str | None = None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def status(self) -> str:
        """``sent``, ``transient`` or ``permanent``."""
        return "sent" if self.failure is None else self.failure.kind.value


@runtime_checkable
class Provider(Protocol):
    """Sends Deliveries over one channel. ``send`` returns a SendResult and never raises.

    ``aclose`` releases what the provider opened itself (pooled SMTP connections); an injected
    HTTP client stays open: it belongs to whoever passed it in. A provider whose API
    deduplicates by our idempotency key says so with ``idempotent = True``: then a send whose
    outcome is unknown (its worker died mid-call) is repeated; otherwise it is dead-lettered.
    """

    name: str
    channel: Channel

    async def send(self, delivery: Delivery) -> SendResult: ...

    async def aclose(self) -> None: ...


class Stopwatch:
    """Times one send and builds its SendResult."""

    __slots__ = ("_delivery", "_provider", "_start", "started_at")

    def __init__(self, provider: str, delivery: Delivery) -> None:
        self._provider = provider
        self._delivery = delivery
        self.started_at = time.time()
        self._start = time.perf_counter()

    def sent(self, message_id: str | None) -> SendResult:
        return self._result(message_id, None)

    def failed(self, failure: Failure) -> SendResult:
        return self._result(None, failure)

    def _result(self, message_id: str | None, failure: Failure | None) -> SendResult:
        d = self._delivery
        return SendResult(
            self._provider, d.channel, d.address, d.idempotency_key, self.started_at,
            (time.perf_counter() - self._start) * 1000, message_id, failure,
        )


class NoopProvider:
    """Accepts everything and sends nothing: for benchmarks and dry runs."""

    def __init__(self, channel: Channel, name: str = "noop") -> None:
        self.channel = channel
        self.name = name

    async def send(self, delivery: Delivery) -> SendResult:
        return Stopwatch(self.name, delivery).sent(f"noop-{delivery.idempotency_key}")

    async def aclose(self) -> None:
        """Nothing to release."""
