"""SMS, push and webhooks against the real local HTTP capture server, and a fallback chain."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tidings.capture import HttpCapture
from tidings.notification import Notification, parse_notification
from tidings.sinks import (
    PERMANENT,
    TRANSIENT,
    Failure,
    FcmPush,
    InvalidSignature,
    Provider,
    ProviderSettings,
    SignedWebhook,
    TwilioSms,
    deliveries,
    fall_back,
    verify_signature,
)
from tidings.sinks.webhook import SIGNATURE_HEADER

SECRET = "whsec-test"


# One server for the module (starting and stopping uvicorn costs ~0.2 s), reset per test.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_server() -> AsyncIterator[HttpCapture]:
    async with HttpCapture(twilio_credentials=("AC1", "token"), fcm_token="bearer-ok",
                           webhook_secret=SECRET) as capture:
        yield capture


@pytest.fixture
def server(shared_server: HttpCapture) -> HttpCapture:
    shared_server.reset()
    return shared_server


@pytest_asyncio.fixture(loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as http:
        yield http


def settings(server: HttpCapture, **changes: Any) -> ProviderSettings:
    values: dict[str, Any] = {
        "twilio_base_url": server.url, "twilio_account_sid": "AC1", "twilio_auth_token": "token",
        "twilio_from": "+15005550006", "fcm_base_url": server.url, "fcm_project_id": "demo",
        "fcm_access_token": "bearer-ok", "webhook_url": f"{server.url}/webhooks/orders",
        "webhook_secret": SECRET, **changes,
    }
    return ProviderSettings(**values)


def notification(**recipient: Any) -> Notification:
    return parse_notification({
        "type": "order.shipped", "idempotency_key": "order-7",
        "recipient": {"user_id": "u-7", **recipient},
        "content": {"title": "Shipped", "body": "Order 7 is on its way"},
    })


async def send_sms(server: HttpCapture, client: httpx.AsyncClient, phone: str = "+14155550123",
                   **changes: Any) -> tuple[str | None, Failure | None]:
    n = notification(phone=phone)
    assert n.content is not None
    result = await TwilioSms.from_settings(settings(server, **changes), client).send(
        next(deliveries(n, "sms", n.content)))
    return result.provider_message_id, result.failure


async def send_push(server: HttpCapture, client: httpx.AsyncClient,
                    token: str = "device-1") -> tuple[str | None, Failure | None]:
    n = notification(device_tokens=[token])
    assert n.content is not None
    result = await FcmPush.from_settings(settings(server), client).send(
        next(deliveries(n, "push", n.content)))
    return result.provider_message_id, result.failure


# -- SMS -----------------------------------------------------------------------------------


async def test_an_sms_is_accepted_with_a_sid(server: HttpCapture,
                                             client: httpx.AsyncClient) -> None:
    sid, failure = await send_sms(server, client)
    assert failure is None
    [sms] = server.sms
    assert sid == sms.sid
    assert sid.startswith("SM")
    assert (sms.to, sms.sender, sms.body) == ("+14155550123", "+15005550006",
                                              "Order 7 is on its way")


async def test_a_retried_sms_is_deduplicated_by_its_idempotency_key(
    server: HttpCapture, client: httpx.AsyncClient
) -> None:
    first, _ = await send_sms(server, client)
    again, _ = await send_sms(server, client)
    assert first == again
    assert len(server.sms) == 1
    assert server.counts.duplicates == 1


@pytest.mark.parametrize(("phone", "code"), [("+15005550001", "21211"),
                                           ("+15005550009", "21614")])
async def test_a_number_the_provider_refuses_is_a_permanent_bad_address(
    server: HttpCapture, client: httpx.AsyncClient, phone: str, code: str
) -> None:
    _, failure = await send_sms(server, client, phone=phone)
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.code == code
    assert failure.bad_address
    assert server.sms == deque()


async def test_wrong_credentials_are_permanent(server: HttpCapture,
                                               client: httpx.AsyncClient) -> None:
    _, failure = await send_sms(server, client, twilio_auth_token="wrong")
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.code == "20003"


async def test_a_429_is_transient(server: HttpCapture, client: httpx.AsyncClient) -> None:
    server.fault("sms", status=429)
    _, failure = await send_sms(server, client)
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.http_status == 429


async def test_a_500_is_transient(server: HttpCapture, client: httpx.AsyncClient) -> None:
    server.fault("sms", status=500)
    _, failure = await send_sms(server, client)
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.http_status == 500


async def test_a_garbage_reply_is_a_readable_failure(server: HttpCapture,
                                                    client: httpx.AsyncClient) -> None:
    server.fault("sms", status=200, body=b"\x00\xffnot json at all")
    _, failure = await send_sms(server, client)
    assert failure is not None
    assert failure.code == "bad_reply"
    assert "not json at all" in failure.reason


async def test_a_slow_provider_times_out_as_transient(server: HttpCapture) -> None:
    server.fault("sms", status=None, latency_s=0.5)
    async with httpx.AsyncClient(timeout=0.1) as impatient:
        _, failure = await send_sms(server, impatient)
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "timeout"


async def test_a_fault_applies_only_as_many_times_as_asked(
    server: HttpCapture, client: httpx.AsyncClient
) -> None:
    server.fault("sms", status=503, times=1)
    _, first = await send_sms(server, client)
    _, second = await send_sms(server, client)
    assert first is not None
    assert second is None


# -- push ----------------------------------------------------------------------------------


async def test_a_push_is_accepted_with_a_message_name(server: HttpCapture,
                                                     client: httpx.AsyncClient) -> None:
    message_id, failure = await send_push(server, client)
    assert failure is None
    [push] = server.push
    assert push.message_id == message_id
    assert push.token == "device-1"
    assert push.message["notification"]["body"] == "Order 7 is on its way"


async def test_an_unregistered_token_is_permanent(server: HttpCapture,
                                                 client: httpx.AsyncClient) -> None:
    _, failure = await send_push(server, client, token="invalid-device")
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.code == "UNREGISTERED"
    assert failure.bad_address


async def test_unavailable_is_transient(server: HttpCapture, client: httpx.AsyncClient) -> None:
    server.fault("push", status=503)
    _, failure = await send_push(server, client)
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "UNAVAILABLE"


async def test_a_wrong_bearer_token_is_unauthenticated(server: HttpCapture,
                                                      client: httpx.AsyncClient) -> None:
    n = notification(device_tokens=["device-1"])
    assert n.content is not None
    provider = FcmPush.from_settings(settings(server, fcm_access_token="stale"), client)
    failure = (await provider.send(next(deliveries(n, "push", n.content)))).failure
    assert failure is not None
    assert failure.code == "UNAUTHENTICATED"


# -- webhook -------------------------------------------------------------------------------


async def test_a_webhook_arrives_with_a_signature_that_verifies(
    server: HttpCapture, client: httpx.AsyncClient
) -> None:
    n = notification()
    assert n.content is not None
    result = await SignedWebhook.from_settings(settings(server), client).send(
        next(deliveries(n, "webhook", n.content)))
    assert result.ok, result.failure
    [hook] = server.webhooks
    assert hook.path == "orders"
    verify_signature(SECRET, hook.headers[SIGNATURE_HEADER.lower()], hook.body)


async def test_a_webhook_signed_with_the_wrong_secret_is_refused(
    server: HttpCapture, client: httpx.AsyncClient
) -> None:
    n = notification()
    assert n.content is not None
    provider = SignedWebhook.from_settings(settings(server, webhook_secret="other"), client)
    result = await provider.send(next(deliveries(n, "webhook", n.content)))
    assert result.failure is not None
    assert result.failure.http_status == 401
    assert server.counts.bad_signatures == 1


async def test_a_tampered_body_fails_verification(server: HttpCapture,
                                                  client: httpx.AsyncClient) -> None:
    n = notification()
    assert n.content is not None
    await SignedWebhook.from_settings(settings(server), client).send(
        next(deliveries(n, "webhook", n.content)))
    [hook] = server.webhooks
    tampered = hook.body.replace(b"Order 7", b"Order 8")
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(SECRET, hook.headers[SIGNATURE_HEADER.lower()], tampered)


async def test_a_server_that_is_down_is_transient(client: httpx.AsyncClient) -> None:
    capture = await HttpCapture().start()
    url = capture.url
    await capture.stop()
    provider = SignedWebhook(client, url=f"{url}/webhooks/x", secret=SECRET)
    n = notification()
    assert n.content is not None
    failure = (await provider.send(next(deliveries(n, "webhook", n.content)))).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "connection"


# -- orchestration -------------------------------------------------------------------------


async def test_push_with_an_invalid_token_falls_back_to_sms_and_records_both_legs(
    server: HttpCapture, client: httpx.AsyncClient
) -> None:
    n = notification(device_tokens=["invalid-token"], phone="+14155550123")
    chain: list[Provider] = [FcmPush.from_settings(settings(server), client),
             TwilioSms.from_settings(settings(server), client)]
    dispatch = await fall_back(n, chain)
    push, sms = dispatch.legs
    assert (push.channel, push.status, push.provider) == ("push", "permanent", "fcm")
    assert push.failure is not None
    assert push.failure.code == "UNREGISTERED"
    assert (sms.channel, sms.status, sms.provider) == ("sms", "sent", "twilio")
    assert sms.provider_message_id == server.sms[0].sid
    assert dispatch.delivered == ("sms",)
