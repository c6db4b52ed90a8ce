"""Signed webhooks: Stripe-style signatures, their verification, and reply classification."""

from __future__ import annotations

import contextlib

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.notification import parse_notification
from tidings.sinks import (
    PERMANENT,
    TRANSIENT,
    Delivery,
    InvalidSignature,
    SignedWebhook,
    deliveries,
    sign,
    verify_signature,
)
from tidings.sinks.webhook import SIGNATURE_HEADER

NOW = 1_790_000_000


def delivery() -> Delivery:
    n = parse_notification({
        "type": "invoice.paid", "channels": ["webhook"], "tenant": "acme",
        "recipient": {"user_id": "u-9"}, "content": {"body": "Invoice 7 paid"},
    })
    assert n.content is not None
    return next(deliveries(n, "webhook", n.content))


@given(st.binary(max_size=200), st.text(min_size=1, max_size=40))
def test_a_signature_verifies_for_its_body_and_secret(body: bytes, secret: str) -> None:
    assert verify_signature(secret, sign(secret, body, NOW), body, now=NOW) == NOW


@given(st.binary(min_size=1, max_size=200), st.data())
def test_changing_any_byte_of_the_body_breaks_the_signature(
    body: bytes, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature("s3cret", sign("s3cret", body, NOW), tampered, now=NOW)


def test_the_wrong_secret_fails() -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature("other", sign("s3cret", b"{}", NOW), b"{}", now=NOW)


@pytest.mark.parametrize("header", ["t=²,v1=ab", "t=,v1=ab", "v1=ab", "t=12", "garbage"])
def test_a_malformed_header_is_an_invalid_signature_not_a_crash(header: str) -> None:
    with pytest.raises(InvalidSignature, match="needs 't=<unix>' and 'v1=<hex>'"):
        verify_signature("s", header, b"{}", now=NOW)


@given(st.text(max_size=60))
def test_any_header_text_is_verified_or_refused_never_raised_otherwise(header: str) -> None:
    with contextlib.suppress(InvalidSignature):
        verify_signature("s", header, b"{}", now=NOW)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    with pytest.raises(InvalidSignature, match="replayed"):
        verify_signature("s", sign("s", b"{}", NOW - 301), b"{}", now=NOW)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=123", "t=abc,v1=00"])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature("s", header, b"{}", now=NOW)


def test_any_of_several_signatures_may_match_during_secret_rotation() -> None:
    old, new = sign("old", b"{}", NOW), sign("new", b"{}", NOW)
    header = f"{new},v1={old.split('v1=')[1]}"
    assert verify_signature("old", header, b"{}", now=NOW) == NOW


def webhook(handler: object, secret: str = "s3cret") -> SignedWebhook:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return SignedWebhook(client, url="https://hooks.test/in", secret=secret, clock=lambda: NOW)


async def test_a_webhook_is_signed_json_with_an_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    d = delivery()
    result = await webhook(handler).send(d)
    assert result.ok
    assert result.provider_message_id == d.idempotency_key
    request = seen[0]
    assert verify_signature("s3cret", request.headers[SIGNATURE_HEADER], request.content,
                            now=NOW) == NOW
    assert request.headers["idempotency-key"] == d.idempotency_key
    body = orjson.loads(request.content)
    assert body["type"] == "invoice.paid"
    assert body["tenant"] == "acme"
    assert body["content"] == {"body": "Invoice 7 paid"}
    assert body["id"] == d.idempotency_key


async def test_gone_is_a_permanent_bad_address() -> None:
    failure = (await webhook(lambda r: httpx.Response(410)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.bad_address


async def test_an_endpoint_error_is_transient() -> None:
    failure = (await webhook(lambda r: httpx.Response(503, text="down")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert "'down'" in failure.reason


async def test_a_redirect_is_not_followed_and_says_where_it_pointed() -> None:
    handler = lambda r: httpx.Response(301, headers={"Location": "https://new.test/in"})  # noqa: E731
    failure = (await webhook(handler).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert "https://new.test/in" in failure.reason


async def test_a_bad_request_is_permanent() -> None:
    failure = (await webhook(lambda r: httpx.Response(400)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert not failure.bad_address
