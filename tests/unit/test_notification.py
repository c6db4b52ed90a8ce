"""The notification contract: what is accepted, what is refused, and how refusals read."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tidings.errors import PayloadError
from tidings.message import Priority
from tidings.notification import Notification, NotificationPriority, Recipient, parse_notification


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "order.shipped",
        "channels": ["email", "sms", "push"],
        "recipient": {
            "user_id": "u-42",
            "email": "ada@example.com",
            "phone": "+351912345678",
            "device_tokens": ["tok-1", "tok-2"],
            "timezone": "Europe/Lisbon",
            "locale": "pt-BR",
        },
        "template": "order_shipped",
        "data": {"order": "A-1"},
        "priority": "high",
        "tenant": "acme",
        "idempotency_key": "order-A-1-shipped",
        "send_at": "2026-11-28T18:00:00+00:00",
    }
    base.update(changes)
    return base


def recipient(**changes: Any) -> dict[str, Any]:
    return {"user_id": "u-1", **changes}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_notification(data)
    return str(caught.value)


def test_a_full_notification_is_accepted() -> None:
    n = parse_notification(payload())
    assert n.type == "order.shipped"
    assert n.channels == ["email", "sms", "push"]
    assert n.recipient.device_tokens == ("tok-1", "tok-2")
    assert n.priority is NotificationPriority.HIGH
    assert n.send_at is not None
    assert n.send_at.utcoffset() is not None


def test_a_device_token_given_twice_is_one_push_leg() -> None:
    r = Recipient(user_id="u", device_tokens=["tok-1", "tok-2", "tok-1"])

    assert r.addresses("push") == ("tok-1", "tok-2")


def test_json_bytes_parse_like_a_dict() -> None:
    assert parse_notification(orjson.dumps(payload())) == parse_notification(payload())


def test_a_minimal_notification_gets_defaults() -> None:
    n = parse_notification({"type": "user.welcome", "recipient": recipient(),
                            "content": {"body": "hi"}})
    assert n.channels == "auto"
    assert n.priority is NotificationPriority.NORMAL
    assert n.tenant == "default"
    assert n.recipient.locale == "en"
    assert len(n.idempotency_key) == 32


def test_one_channel_name_is_a_list_of_one() -> None:
    assert parse_notification(payload(channels="sms")).channels == ["sms"]


def test_auto_is_accepted_alone_or_as_a_list() -> None:
    assert parse_notification(payload(channels=["auto"])).channels == "auto"


@pytest.mark.parametrize(
    ("priority", "lane"),
    [("critical", Priority.HIGH), ("high", Priority.HIGH), ("normal", Priority.NORMAL),
     ("low", Priority.LOW)],
)
def test_priority_maps_to_a_transport_lane(priority: str, lane: Priority) -> None:
    assert parse_notification(payload(priority=priority)).lane is lane


def test_round_trip_through_json_is_lossless() -> None:
    n = parse_notification(payload())
    assert Notification.model_validate_json(n.model_dump_json()) == n


def test_locale_is_canonicalised() -> None:
    n = parse_notification(payload(channels="auto", recipient=recipient(locale="zh_hant_tw")))
    assert n.recipient.locale == "zh-Hant-TW"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"recipient": recipient(phone="912345678")}, "recipient.phone: "),
        ({"recipient": recipient(email="not-an-address")}, "recipient.email: "),
        ({"recipient": recipient(timezone="Mars/Olympus")}, "recipient.timezone: "),
        ({"recipient": recipient(locale="english")}, "recipient.locale: "),
        ({"recipient": recipient(device_tokens=["has space"])}, "recipient.device_tokens.0: "),
        ({"channels": ["email", "fax"]}, "channels: Value error, unknown channel 'fax'"),
        ({"channels": ["email", "email"]}, "channels: Value error, a channel is listed twice"),
        ({"channels": []}, "channels: Value error, name at least one channel"),
        ({"type": "Order Shipped"}, "type: "),
        ({"priority": "urgent"}, "priority: "),
        ({"send_at": "2026-11-28T18:00:00"}, "send_at: Input should have timezone info"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"idempotency_key": ""}, "idempotency_key: "),
    ],
)
def test_a_bad_field_is_named_with_its_reason(changes: dict[str, Any], expected: str) -> None:
    assert expected in error_of(payload(**changes))


@pytest.mark.parametrize(
    "address", ["a.b+tag@sub.example.co.uk", "o'brien@example.ie", "x_1@mail-server.example"]
)
def test_ordinary_email_addresses_are_accepted(address: str) -> None:
    n = parse_notification(payload(channels="email", recipient=recipient(email=address)))
    assert n.recipient.email == address


@pytest.mark.parametrize(
    "address", ["ada", "ada@", "@example.com", "ada@example", "a da@example.com",
                "ada@@example.com", "Ada <ada@example.com>", "ada@exämple.com"]
)
def test_malformed_email_addresses_are_refused(address: str) -> None:
    assert "recipient.email: " in error_of(payload(recipient=recipient(email=address)))


def test_the_phone_error_says_how_to_write_e164() -> None:
    assert "'+14155550123'" in error_of(payload(recipient=recipient(phone="0800 123")))


def test_template_and_content_together_are_refused() -> None:
    message = error_of(payload(content={"body": "hi"}))
    assert "content: Value error, give exactly one of 'template'" in message


def test_neither_template_nor_content_is_refused() -> None:
    data = payload()
    del data["template"], data["data"]
    assert "content: Value error, give exactly one of" in error_of(data)


def test_data_without_a_template_is_refused() -> None:
    data = payload(content={"body": "hi"})
    del data["template"]
    assert "'data' is only used with a 'template'" in error_of(data)


def test_an_explicit_channel_needs_an_address_on_the_recipient() -> None:
    message = error_of(payload(channels=["push"], recipient=recipient(email="a@example.com")))
    assert "recipient: Value error, channel 'push' needs recipient.device_tokens" in message


def test_auto_channels_need_no_particular_address() -> None:
    n = parse_notification(payload(channels="auto", recipient=recipient()))
    assert n.recipient.addresses("email") == ()


def test_every_failing_field_is_reported_at_once() -> None:
    message = error_of(payload(type="x", recipient=recipient(phone="1", locale="??")))
    assert "type: " in message
    assert "recipient.phone: " in message
    assert "recipient.locale: " in message


def test_a_notification_is_immutable() -> None:
    n = parse_notification(payload())
    with pytest.raises(ValueError, match="frozen"):
        n.tenant = "other"  # type: ignore[misc]


def test_webhook_is_addressed_by_user_id() -> None:
    n = parse_notification(payload(channels=["webhook"], recipient=recipient()))
    assert n.recipient.addresses("webhook") == ("u-1",)


def test_text_postgresql_cannot_store_is_refused_at_publish_with_its_path() -> None:
    base = {"type": "order.shipped", "channels": ["email"],
            "recipient": {"user_id": "u1", "email": "ada@example.com"}}

    with pytest.raises(PayloadError, match=r"data: .*data\.order\.lines\[1\] contains a NUL"):
        parse_notification({**base, "template": "t",
                            "data": {"order": {"lines": ["ok", "bad\x00"]}}})
    with pytest.raises(PayloadError, match=r"content\.subject: .*contains a NUL"):
        parse_notification({**base, "content": {"body": "hi", "subject": "a\x00"}})


def test_a_device_token_longer_than_the_ledger_can_index_is_refused_at_publish() -> None:
    message = error_of(payload(recipient={"user_id": "u-1", "device_tokens": ["x" * 2049]}))
    assert "recipient.device_tokens.0" in message
    assert "at most 2048 characters; this one has 2049" in message


def test_the_longest_device_token_is_accepted() -> None:
    n = parse_notification(payload(channels=["push"],
                                   recipient={"user_id": "u-1", "device_tokens": ["x" * 2048]}))
    assert n.recipient.device_tokens == ("x" * 2048,)


def test_a_type_longer_than_200_characters_is_refused() -> None:
    message = error_of(payload(type="order." + "a" * 195))
    assert "type: Value error, a type is at most 200 characters" in message
    assert parse_notification(payload(type="order." + "a" * 194)).type.endswith("a")
