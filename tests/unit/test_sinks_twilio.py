"""Twilio-compatible SMS: request shape and the classification of every kind of reply."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from tidings.errors import ConfigurationError
from tidings.notification import Content, parse_notification
from tidings.sinks import PERMANENT, TRANSIENT, Delivery, ProviderSettings, TwilioSms, deliveries

Handler = Callable[[httpx.Request], httpx.Response]


def delivery() -> Delivery:
    n = parse_notification({
        "type": "order.shipped", "channels": ["sms"], "idempotency_key": "k-1",
        "recipient": {"user_id": "u-1", "phone": "+14155550123"},
        "content": {"body": "Your order shipped"},
    })
    assert n.content is not None
    return next(deliveries(n, "sms", n.content))


def sms(handler: Handler, **kwargs: str) -> TwilioSms:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    options = {"account_sid": "AC1", "auth_token": "secret", "sender": "+15005550006", **kwargs}
    return TwilioSms(client, base_url="https://sms.test", **options)


def reply(status: int, body: bytes, **headers: str) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


async def test_a_message_is_a_form_post_with_basic_auth_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM123", "status": "queued"})

    d = delivery()
    result = await sms(handler).send(d)
    assert result.ok
    assert result.provider_message_id == "SM123"
    assert result.status == "sent"
    assert result.provider == "twilio"
    assert result.duration_ms >= 0
    request = seen[0]
    assert request.url == "https://sms.test/2010-04-01/Accounts/AC1/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic QUMxOnNlY3JldA=="
    assert request.headers["idempotency-key"] == d.idempotency_key
    form = parse_qs(request.content.decode())
    assert form == {"To": ["+14155550123"], "From": ["+15005550006"],
                    "Body": ["Your order shipped"]}


async def test_a_messaging_service_replaces_the_from_number() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM1"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = TwilioSms(client, account_sid="AC1", auth_token="t", messaging_service_sid="MG9")
    await provider.send(delivery())
    assert parse_qs(seen[0].content.decode())["MessagingServiceSid"] == ["MG9"]


async def test_an_invalid_number_is_a_permanent_bad_address() -> None:
    body = b'{"code": 21211, "message": "The \'To\' number is not valid.", "status": 400}'
    failure = (await sms(reply(400, body)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.bad_address
    assert failure.code == "21211"
    assert failure.http_status == 400
    assert "not valid" in failure.reason


async def test_rejected_credentials_are_permanent_but_not_a_bad_address() -> None:
    failure = (await sms(reply(401, b'{"code": 20003, "message": "Authenticate"}'))
               .send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert not failure.bad_address


async def test_too_many_requests_is_transient_with_the_advised_wait() -> None:
    handler = reply(429, b'{"code": 20429, "message": "Too Many Requests"}', **{
        "Retry-After": "7"})
    failure = (await sms(handler).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_server_error_is_transient(status: int) -> None:
    failure = (await sms(reply(status, b'{"code": 20500}')).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.http_status == status


@pytest.mark.parametrize("body", [b'{"code": [21211]}', b'{"code": {"x": 1}, "message": [1]}'])
async def test_an_error_body_of_an_unexpected_shape_is_judged_by_its_status(body: bytes) -> None:
    failure = (await sms(reply(503, body)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code is None


async def test_a_success_status_with_a_non_json_body_is_a_readable_transient_failure() -> None:
    failure = (await sms(reply(200, b"<html>proxy error</html>")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "bad_reply"
    assert "no message 'sid'" in failure.reason
    assert "proxy error" in failure.reason


async def test_a_reply_without_a_sid_is_a_failure() -> None:
    failure = (await sms(reply(201, b'{"status": "queued"}')).send(delivery())).failure
    assert failure is not None
    assert failure.code == "bad_reply"


async def test_a_client_error_with_a_garbage_body_is_permanent_and_quotes_it() -> None:
    failure = (await sms(reply(404, b"Not Found")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert "'Not Found'" in failure.reason


async def test_a_timeout_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    failure = (await sms(handler).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "timeout"


async def test_a_refused_connection_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    failure = (await sms(handler).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "connection"


def test_settings_without_credentials_say_which_variables_to_set() -> None:
    with pytest.raises(ConfigurationError, match="TIDINGS_TWILIO_ACCOUNT_SID"):
        TwilioSms.from_settings(ProviderSettings(), httpx.AsyncClient())


def test_a_sender_is_required() -> None:
    settings = ProviderSettings(twilio_account_sid="AC1", twilio_auth_token="t")
    with pytest.raises(ConfigurationError, match="TIDINGS_TWILIO_FROM"):
        TwilioSms.from_settings(settings, httpx.AsyncClient())


def test_content_body_is_what_is_sent() -> None:
    assert delivery().content == Content(body="Your order shipped")
