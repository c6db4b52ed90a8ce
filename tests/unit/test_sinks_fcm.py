"""FCM HTTP v1-compatible push: request shape and classification of FCM's error replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tidings.sinks import PERMANENT, TRANSIENT, Delivery, FcmPush, deliveries, static_token

Handler = Callable[[httpx.Request], httpx.Response]


def delivery() -> Delivery:
    from tidings.notification import parse_notification

    n = parse_notification({
        "type": "chat.message", "channels": ["push"], "idempotency_key": "k-2",
        "recipient": {"user_id": "u-1", "device_tokens": ["device-a"]},
        "content": {"title": "New message", "body": "Hi!"},
    })
    assert n.content is not None
    return next(deliveries(n, "push", n.content))


def push(handler: Handler) -> FcmPush:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return FcmPush(client, project_id="proj", token_source=static_token("bearer-1"),
                   base_url="https://push.test")


def fcm_error(status: int, state: str, error_code: str | None = None) -> Handler:
    error: dict[str, Any] = {"code": status, "message": f"{state} happened", "status": state}
    if error_code:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                             "errorCode": error_code}]
    return lambda request: httpx.Response(status, json={"error": error})


async def test_a_push_posts_the_v1_message_with_a_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": "projects/proj/messages/0:123%abc"})

    d = delivery()
    result = await push(handler).send(d)
    assert result.ok
    assert result.provider_message_id == "0:123%abc"
    request = seen[0]
    assert request.url == "https://push.test/v1/projects/proj/messages:send"
    assert request.headers["authorization"] == "Bearer bearer-1"
    message = orjson.loads(request.content)["message"]
    assert message["token"] == "device-a"
    assert message["notification"] == {"title": "New message", "body": "Hi!"}
    assert message["data"]["tidings_key"] == d.idempotency_key


async def test_an_unregistered_token_is_a_permanent_bad_address() -> None:
    failure = (await push(fcm_error(404, "NOT_FOUND", "UNREGISTERED")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.bad_address
    assert failure.code == "UNREGISTERED"
    assert "NOT_FOUND happened" in failure.reason


async def test_an_invalid_argument_is_a_permanent_bad_address() -> None:
    failure = (await push(fcm_error(400, "INVALID_ARGUMENT")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.bad_address
    assert failure.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("status", "state"), [(503, "UNAVAILABLE"), (500, "INTERNAL"), (429, "RESOURCE_EXHAUSTED")]
)
async def test_unavailable_internal_and_quota_are_transient(status: int, state: str) -> None:
    failure = (await push(fcm_error(status, state)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert not failure.bad_address


@pytest.mark.parametrize("details", [1, "UNREGISTERED", {"errorCode": "UNREGISTERED"}])
async def test_error_details_of_an_unexpected_shape_are_judged_by_the_status(
    details: object,
) -> None:
    error = {"code": 503, "status": "UNAVAILABLE", "details": details}
    failure = (await push(lambda request: httpx.Response(503, json={"error": error}))
               .send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "UNAVAILABLE"


async def test_a_rejected_bearer_token_is_permanent_and_not_the_device() -> None:
    failure = (await push(fcm_error(401, "UNAUTHENTICATED")).send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert not failure.bad_address


async def test_a_success_without_a_name_is_a_readable_failure() -> None:
    failure = (await push(lambda r: httpx.Response(200, content=b"ok")).send(delivery())).failure
    assert failure is not None
    assert failure.code == "bad_reply"
    assert "'ok'" in failure.reason


async def test_an_html_error_page_is_classified_by_status() -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    failure = (await push(lambda r: httpx.Response(502, content=page)).send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert "Bad Gateway" in failure.reason


async def test_a_failing_token_source_is_recorded_not_raised() -> None:
    async def broken() -> str:
        raise RuntimeError("metadata server down")

    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    provider = FcmPush(client, project_id="p", token_source=broken)
    failure = (await provider.send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "token_source"
    assert "metadata server down" in failure.reason
