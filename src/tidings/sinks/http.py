"""What every HTTP provider shares: one request that never raises, and status classification."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tidings.sinks.base import PERMANENT, TRANSIENT, Failure

# 408 Request Timeout, 425 Too Early and 429 Too Many Requests are worth retrying; so is 5xx.
_RETRYABLE = frozenset({408, 425, 429})


def is_retryable(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE


# A provider's reply is a few hundred bytes; one far larger is not worth holding in memory.
MAX_REPLY_BYTES = 1 << 20


async def post(client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response | Failure:
    """POST, turning every way the request can fail to happen into a classified Failure.

    The whole exchange is bounded by the sum of the client's timeouts (httpx's own apply to
    each read: a reply that trickles in would hold the send forever), and the reply by
    :data:`MAX_REPLY_BYTES`. Reasons name the provider by its origin alone: the rest of a URL
    (a webhook's path, its user and password) may hold a secret."""
    where = origin(url)
    auth = kwargs.pop("auth", httpx.USE_CLIENT_DEFAULT)  # send()'s, not the request's
    try:
        async with asyncio.timeout(_deadline(client.timeout)):
            response = await client.send(client.build_request("POST", url, **kwargs),
                                         auth=auth, stream=True)
            try:
                length = response.headers.get("content-length", "")
                if length.isascii() and length.isdigit() and int(length) > MAX_REPLY_BYTES:
                    return Failure(TRANSIENT, f"HTTP {response.status_code} with a reply of"
                                   f" {int(length):,} bytes from {where}, over the"
                                   f" {MAX_REPLY_BYTES:,} read", code="bad_reply",
                                   http_status=response.status_code)
                await response.aread()
            finally:
                await response.aclose()
        return response
    except (httpx.TimeoutException, TimeoutError) as exc:
        # Connecting or waiting for a pooled connection: nothing was sent. Otherwise it may.
        sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return Failure(TRANSIENT, f"no reply in time ({type(exc).__name__}) from {where}",
                       code="timeout", maybe_delivered=sent)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return Failure(PERMANENT, f"unusable provider URL ({where}): {exc}", code="bad_url")
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        # The connection broke after the request went out (no reply): it may have arrived.
        sent = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
        return Failure(TRANSIENT, f"could not reach {where}: {detail}", code="connection",
                       maybe_delivered=sent)


def _deadline(timeout: httpx.Timeout) -> float | None:
    parts = (timeout.connect, timeout.write, timeout.read, timeout.pool)
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, for messages (never its user, password or path)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "an invalid URL"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}" if parsed.host else "a URL with no host"


def snippet(body: bytes, limit: int = 120) -> str:
    """The start of a body, printable, for a reason line."""
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
    return repr(text + ("…" if len(body) > limit else ""))


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The reply as a JSON object, or None if it is anything else."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a numeric ``Retry-After`` header (the HTTP-date form is ignored)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def status_failure(
    response: httpx.Response, reason: str, *, code: str | None = None, bad_address: bool = False
) -> Failure:
    """A Failure for an error status: transient if retrying could help, else permanent."""
    status = response.status_code
    kind = TRANSIENT if is_retryable(status) else PERMANENT
    return Failure(kind, f"HTTP {status}: {reason}", code=code, http_status=status,
                   bad_address=bad_address and kind is PERMANENT,
                   retry_after=retry_after(response))


def garbage_failure(response: httpx.Response, what: str) -> Failure:
    """A success status whose body we cannot use.

    Transient: the provider may or may not have accepted the message, and a retry carries the
    same idempotency key, so a provider that honours it will not send twice.
    """
    return Failure(TRANSIENT, f"HTTP {response.status_code} but {what}: "
                   f"{snippet(response.content)}", code="bad_reply",
                   http_status=response.status_code)
