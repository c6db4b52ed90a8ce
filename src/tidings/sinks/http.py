"""What every HTTP provider shares: one request that never raises, and status classification."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tidings.sinks.base import PERMANENT, TRANSIENT, Failure

# 408 Request Timeout, 425 Too Early and 429 Too Many Requests are worth retrying; so is 5xx.
_RETRYABLE = frozenset({408, 425, 429})


def is_retryable(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE


async def post(client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response | Failure:
    """POST, turning every way the request can fail to happen into a classified Failure."""
    try:
        return await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        # Connecting or waiting for a pooled connection: nothing was sent. Otherwise it may.
        sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return Failure(TRANSIENT, f"no reply in time ({type(exc).__name__}) from {url}",
                       code="timeout", maybe_delivered=sent)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return Failure(PERMANENT, f"unusable provider URL {url!r}: {exc}", code="bad_url")
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        # The connection broke after the request went out (no reply): it may have arrived.
        sent = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
        return Failure(TRANSIENT, f"could not reach {url}: {detail}", code="connection",
                       maybe_delivered=sent)


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
