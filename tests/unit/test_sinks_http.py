"""How an HTTP provider request that fails without a reply is classified."""

from __future__ import annotations

import httpx
import pytest

from tidings.sinks.base import Failure
from tidings.sinks.http import post


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
