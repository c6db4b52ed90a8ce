"""A generic signed webhook: POST JSON with a Stripe-style ``X-Tidings-Signature`` header.

The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``; receivers check it
with :func:`verify_signature`, which also rejects stale timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import httpx
import orjson

from tidings.errors import ConfigurationError, TidingsError
from tidings.notification import Channel
from tidings.sinks.base import Delivery, SendResult, Stopwatch
from tidings.sinks.http import post, snippet, status_failure
from tidings.sinks.settings import ProviderSettings

SIGNATURE_HEADER = "X-Tidings-Signature"
DEFAULT_TOLERANCE_S = 300


class InvalidSignature(TidingsError):
    """A webhook whose signature is missing, malformed, wrong or too old."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Tidings-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a received webhook; return its timestamp or raise InvalidSignature.

    Several ``v1=`` entries are allowed (a sender rotating secrets signs with both).
    """
    if not header:
        raise InvalidSignature(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature(f"{SIGNATURE_HEADER} needs 't=<unix>' and 'v1=<hex>'")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_s:
        raise InvalidSignature(f"signature timestamp is {age:.0f} s off; "
                               f"more than {tolerance_s} s (replayed, or a clock is wrong)")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match the body (wrong secret or altered)")
    return timestamp


class SignedWebhook:
    """POSTs each delivery as JSON to one endpoint, signed with a shared secret.

    Our idempotency key goes in ``Idempotency-Key`` and as the event ``id``. 410 Gone is a
    permanent, bad-address failure (the endpoint is retired); 408 / 429 / 5xx are transient.
    Receivers deduplicate by that id (the webhook contract), so a send whose outcome is unknown
    may be repeated: ``idempotent``.
    """

    channel: Channel = "webhook"
    idempotent = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        clock: Callable[[], float] = time.time,
        name: str = "webhook",
    ) -> None:
        if not secret:
            raise ConfigurationError("a signed webhook needs a secret (TIDINGS_WEBHOOK_SECRET)")
        self.name = name
        self._client = client
        self._url = url
        self._secret = secret
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: ProviderSettings, client: httpx.AsyncClient
    ) -> SignedWebhook:
        if not (settings.webhook_url and settings.webhook_secret):
            raise ConfigurationError("webhooks need TIDINGS_WEBHOOK_URL and "
                                     "TIDINGS_WEBHOOK_SECRET")
        return cls(client, url=settings.webhook_url,
                   secret=settings.webhook_secret.get_secret_value())

    def body(self, delivery: Delivery, timestamp: int) -> bytes:
        n = delivery.notification
        return orjson.dumps({
            "id": delivery.idempotency_key,
            "type": n.type,
            "tenant": n.tenant,
            "created": timestamp,
            "priority": n.priority.value,
            "recipient": {"user_id": n.recipient.user_id, "locale": n.recipient.locale},
            "content": delivery.content.model_dump(exclude_none=True),
            "data": n.data,
        })

    async def send(self, delivery: Delivery) -> SendResult:
        watch = Stopwatch(self.name, delivery)
        timestamp = int(self._clock())
        body = self.body(delivery, timestamp)
        reply = await post(self._client, self._url, content=body, headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, timestamp),
            "Idempotency-Key": delivery.idempotency_key,
            "X-Tidings-Event": delivery.notification.type,
        })
        if not isinstance(reply, httpx.Response):
            return watch.failed(reply)
        if reply.is_success:
            return watch.sent(delivery.idempotency_key)
        if reply.is_redirect:
            return watch.failed(status_failure(
                reply, f"redirects are not followed; point TIDINGS_WEBHOOK_URL at "
                       f"{reply.headers.get('location', 'the new address')}"))
        return watch.failed(status_failure(
            reply, f"endpoint refused the webhook: {snippet(reply.content)}",
            bad_address=reply.status_code == 410,
        ))

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client is the caller's."""
