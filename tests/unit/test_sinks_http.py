"""How an HTTP provider request that fails without a reply is classified."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tidings.pipelines.notifications import provider_client
from tidings.sinks.base import Failure
from tidings.sinks.http import MAX_REPLY_BYTES, post
from tidings.sinks.settings import ProviderSettings


def failing_with(error: Exception) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("error", "maybe"), [
    (httpx.ConnectTimeout("connect"), False),
    (httpx.PoolTimeout("pool"), False),
    (httpx.ConnectError("refused"), False),
    (httpx.ReadTimeout("read"), True),
    (httpx.WriteTimeout("write"), True),
    (httpx.RemoteProtocolError("server disconnected without a response"), True),
    (httpx.ReadError("reset"), True),
])
async def test_a_request_may_have_arrived_only_if_it_was_sent(
    error: Exception, maybe: bool,
) -> None:
    async with failing_with(error) as client:
        failure = await post(client, "https://provider.example/send")
    assert isinstance(failure, Failure)
    assert failure.transient
    assert failure.maybe_delivered is maybe


async def test_a_failure_names_the_provider_by_its_origin_not_its_secrets() -> None:
    url = "https://hookuser:hookpass@hooks.example:8443/services/T0KEN/s3cret?sig=abc"
    async with failing_with(httpx.ConnectError("refused")) as client:
        failure = await post(client, url)
    assert isinstance(failure, Failure)
    assert "https://hooks.example:8443" in failure.reason
    for secret in ("hookuser", "hookpass", "T0KEN", "s3cret", "sig=abc"):
        assert secret not in failure.reason


class Trickle(httpx.AsyncByteStream):
    """A reply body that never ends: one byte now and then."""

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        while True:
            yield b"x"
            await asyncio.sleep(0.05)


async def test_a_reply_that_never_ends_is_a_timeout_within_the_client_s_timeouts() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Trickle()))
    async with httpx.AsyncClient(transport=transport, timeout=0.1) as client:
        started = time.monotonic()
        failure = await post(client, "https://provider.example/send")
    assert isinstance(failure, Failure)
    assert failure.code == "timeout"
    assert failure.maybe_delivered
    assert time.monotonic() - started < 1.0, "connect + write + read + pool timeouts: 0.4 s"


async def test_a_reply_declared_over_the_limit_is_not_read() -> None:
    declared = str(MAX_REPLY_BYTES + 1)
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-length": declared}, stream=Trickle()))
    async with httpx.AsyncClient(transport=transport) as client:
        failure = await post(client, "https://provider.example/send")
    assert isinstance(failure, Failure)
    assert failure.transient
    assert failure.code == "bad_reply"
    assert f"{MAX_REPLY_BYTES + 1:,} bytes" in failure.reason


async def test_the_http_timeout_setting_reaches_the_providers_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_HTTP_TIMEOUT", "3.5")
    async with provider_client(ProviderSettings.from_env()) as client:
        assert client.timeout == httpx.Timeout(3.5)
