"""Fan-out and fallback chains: every leg is recorded, including the ones that never started."""

from __future__ import annotations

from typing import Any

from tidings.notification import Channel, Content, Notification, parse_notification
from tidings.sinks import (
    PERMANENT,
    TRANSIENT,
    Delivery,
    Failure,
    FailureKind,
    NoopProvider,
    Provider,
    SendResult,
    fall_back,
    fan_out,
)
from tidings.sinks.base import Stopwatch


class Scripted:
    """A provider whose answer per address is scripted; records what it was asked."""

    def __init__(self, channel: Channel, failures: dict[str, FailureKind] | None = None,
                 name: str | None = None) -> None:
        self.channel = channel
        self.name = name or f"fake-{channel}"
        self.failures = failures or {}
        self.sent: list[Delivery] = []

    async def send(self, delivery: Delivery) -> SendResult:
        self.sent.append(delivery)
        kind = self.failures.get(delivery.address)
        watch = Stopwatch(self.name, delivery)
        if kind is None:
            return watch.sent(f"id-{len(self.sent)}")
        return watch.failed(Failure(kind, "scripted", bad_address=kind is PERMANENT))

    async def aclose(self) -> None:
        pass


class Broken:
    channel: Channel = "email"
    name = "broken"

    async def send(self, delivery: Delivery) -> SendResult:
        raise KeyError("bug")

    async def aclose(self) -> None:
        pass


def notification(**changes: Any) -> Notification:
    data: dict[str, Any] = {
        "type": "order.shipped", "idempotency_key": "n-1",
        "recipient": {"user_id": "u-1", "email": "ada@example.com", "phone": "+14155550123",
                      "device_tokens": ["tok-a", "tok-b"]},
        "content": {"title": "Shipped", "body": "On its way"},
        **changes,
    }
    return parse_notification(data)


async def test_fan_out_sends_every_channel_and_every_device() -> None:
    email, push = Scripted("email"), Scripted("push")
    dispatch = await fan_out(notification(), [email, push])
    assert [(leg.channel, leg.address) for leg in dispatch.legs] == [
        ("email", "ada@example.com"), ("push", "tok-a"), ("push", "tok-b")]
    assert dispatch.delivered == ("email", "push")
    assert dispatch.failures == ()


async def test_fall_back_stops_at_the_first_channel_that_delivers() -> None:
    push, sms = Scripted("push"), Scripted("sms")
    dispatch = await fall_back(notification(), [push, sms])
    assert dispatch.delivered == ("push",)
    assert sms.sent == []


async def test_fall_back_moves_on_when_every_device_token_is_invalid() -> None:
    push = Scripted("push", {"tok-a": PERMANENT, "tok-b": PERMANENT})
    sms = Scripted("sms")
    dispatch = await fall_back(notification(), [push, sms])
    assert [leg.status for leg in dispatch.legs] == ["permanent", "permanent", "sent"]
    assert all(leg.failure and leg.failure.bad_address for leg in dispatch.failures)
    assert dispatch.delivered == ("sms",)


async def test_one_working_device_is_enough_to_stop_the_chain() -> None:
    push, sms = Scripted("push", {"tok-a": TRANSIENT}), Scripted("sms")
    dispatch = await fall_back(notification(), [push, sms])
    assert dispatch.delivered == ("push",)
    assert sms.sent == []


async def test_a_transient_failure_also_falls_back() -> None:
    push = Scripted("push", {"tok-a": TRANSIENT, "tok-b": TRANSIENT})
    dispatch = await fall_back(notification(), [push, Scripted("sms")])
    assert dispatch.delivered == ("sms",)
    assert len(dispatch.failures) == 2


async def test_a_channel_without_an_address_is_a_recorded_leg_and_the_chain_goes_on() -> None:
    n = notification(recipient={"user_id": "u-1", "phone": "+14155550123"})
    dispatch = await fall_back(n, [Scripted("push"), Scripted("sms")])
    first = dispatch.legs[0]
    assert first.channel == "push"
    assert first.failure is not None
    assert first.failure.code == "no_address"
    assert "no push address" in first.failure.reason
    assert dispatch.delivered == ("sms",)


async def test_a_provider_that_raises_becomes_a_permanent_leg() -> None:
    dispatch = await fan_out(notification(), [Broken(), Scripted("sms")])
    broken = dispatch.legs[0]
    assert broken.failure is not None
    assert broken.failure.code == "provider_error"
    assert "KeyError" in broken.failure.reason
    assert broken.address == "ada@example.com"
    assert dispatch.delivered == ("sms",)


async def test_a_template_notification_needs_rendered_content() -> None:
    n = notification(content=None, template="order_shipped", data={"id": 1})
    dispatch = await fan_out(n, [Scripted("sms")])
    assert dispatch.legs[0].failure is not None
    assert dispatch.legs[0].failure.code == "no_content"


async def test_content_can_be_rendered_per_channel() -> None:
    n = notification(content=None, template="order_shipped")
    email, sms = Scripted("email"), Scripted("sms")
    await fan_out(n, [email, sms], {"email": Content(subject="S", body="long"),
                                    "sms": Content(body="short")})
    assert email.sent[0].content.body == "long"
    assert sms.sent[0].content.body == "short"


async def test_leg_keys_are_stable_and_distinct_per_address() -> None:
    first = await fan_out(notification(), [Scripted("push")])
    again = await fan_out(notification(), [Scripted("push")])
    keys = [leg.idempotency_key for leg in first.legs]
    assert keys == [leg.idempotency_key for leg in again.legs]
    assert len(set(keys)) == 2
    assert all(key.startswith("n-1:push:") for key in keys)


async def test_the_noop_provider_is_a_provider_that_always_sends() -> None:
    noop = NoopProvider("sms")
    assert isinstance(noop, Provider)
    dispatch = await fan_out(notification(), [noop])
    assert dispatch.delivered == ("sms",)
