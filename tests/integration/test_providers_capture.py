"""The local capture servers themselves: fault injection, resets, provider-shaped checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tidings.capture import HttpCapture, SmtpCapture
from tidings.errors import ConfigurationError

pytestmark = pytest.mark.asyncio(loop_scope="module")
SMS_PATH = "/2010-04-01/Accounts/AC1/Messages.json"
PUSH_PATH = "/v1/projects/demo/messages:send"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_server() -> AsyncIterator[HttpCapture]:
    async with HttpCapture(seed=7) as capture:
        yield capture


@pytest_asyncio.fixture(loop_scope="module")
async def http(shared_server: HttpCapture) -> AsyncIterator[httpx.AsyncClient]:
    shared_server.reset()
    async with httpx.AsyncClient(base_url=shared_server.url) as client:
        yield client


def sms_form(to: str = "+14155550123") -> dict[str, str]:
    return {"To": to, "From": "+15005550006", "Body": "hello"}


async def test_a_fault_with_a_rate_hits_about_that_share_of_requests(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    shared_server.fault("push", status=503, times=None, rate=0.25)
    statuses = [(await http.post(PUSH_PATH, json={"message": {"token": "t"}})).status_code
                for _ in range(200)]
    assert 25 <= statuses.count(503) <= 75
    assert statuses.count(503) + statuses.count(200) == 200
    assert shared_server.counts.faults == statuses.count(503)


async def test_a_fault_that_strikes_once_lets_every_retry_of_a_request_through(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    shared_server.fault("sms", status=503, times=None, again=False)
    shared_server.fault("sms", status=429, times=None, again=False)

    async def send(key: str) -> int:
        reply = await http.post(SMS_PATH, data=sms_form(), headers={"Idempotency-Key": key})
        return reply.status_code

    assert [await send("leg-1") for _ in range(3)] == [503, 201, 201]
    assert await send("leg-2") == 503, "another request is struck"
    shared_server.fault("push", status=503, times=None, again=False)
    statuses = [(await http.post(PUSH_PATH, json={"message": {"token": t}})).status_code
                for t in ("a", "a", "b", "b")]  # no key: a retry is the same body
    assert statuses == [503, 200, 503, 200]
    assert shared_server.counts.faults == 4


async def test_latency_alone_delays_a_normal_answer(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    shared_server.fault("sms", status=None, latency_s=0.2)
    started = time.perf_counter()
    reply = await http.post(SMS_PATH, data=sms_form())
    assert reply.status_code == 201
    assert time.perf_counter() - started >= 0.19


async def test_a_missing_sender_and_body_get_twilio_codes(http: httpx.AsyncClient) -> None:
    no_sender = await http.post(SMS_PATH, data={"To": "+14155550123", "Body": "x"})
    no_body = await http.post(SMS_PATH, data={"To": "+14155550123", "From": "+15005550006"})
    assert no_sender.json()["code"] == 21603
    assert no_body.json()["code"] == 21602


async def test_a_push_without_a_token_is_invalid_argument(http: httpx.AsyncClient) -> None:
    reply = await http.post(PUSH_PATH, content=b"{not json")
    assert reply.status_code == 400
    assert reply.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_a_token_marked_unregistered_is_refused(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    shared_server.unregistered.add("retired-device")
    reply = await http.post(PUSH_PATH, json={"message": {"token": "retired-device"}})
    assert reply.status_code == 404
    assert reply.json()["error"]["details"][0]["errorCode"] == "UNREGISTERED"


async def test_without_a_secret_any_webhook_is_kept(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    reply = await http.post("/webhooks/a/b", content=b"raw")
    assert reply.status_code == 200
    assert [(w.path, w.body) for w in shared_server.webhooks] == [("a/b", b"raw")]


async def test_reset_forgets_messages_faults_and_counts(
    shared_server: HttpCapture, http: httpx.AsyncClient
) -> None:
    await http.post(SMS_PATH, data=sms_form())
    shared_server.fault("sms", status=500, times=None)
    shared_server.reset()
    assert (await http.post(SMS_PATH, data=sms_form())).status_code == 201
    assert len(shared_server.sms) == 1
    assert shared_server.counts.sms == 1


async def test_an_smtp_capture_refuses_auth_without_tls() -> None:
    with pytest.raises(ConfigurationError, match="needs tls"):
        await SmtpCapture(credentials={"u": "p"}).start()
