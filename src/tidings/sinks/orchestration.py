"""One notification over several channels: fan out to all, or walk a fallback chain.

Every attempt is a leg (a SendResult) in the returned Dispatch, including legs that could not
even start (no provider, no address, nothing rendered), so no failure is ever lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings.notification import Channel, Content, Notification
from tidings.sinks.base import (
    PERMANENT,
    Delivery,
    Failure,
    Provider,
    SendResult,
    deliveries,
    leg_key,
)

ContentSource = Content | Mapping[Channel, Content] | None
"""Rendered content for every channel, per channel, or None to use ``notification.content``."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Every leg tried for one notification, in the order they were tried."""

    notification: Notification
    legs: tuple[SendResult, ...]

    @property
    def delivered(self) -> tuple[Channel, ...]:
        """Channels with at least one successful leg, in order."""
        return tuple(dict.fromkeys(leg.channel for leg in self.legs if leg.ok))

    @property
    def failures(self) -> tuple[SendResult, ...]:
        return tuple(leg for leg in self.legs if not leg.ok)


def _not_started(notification: Notification, channel: Channel, provider: str,
                 reason: str, code: str, bad_address: bool = False) -> SendResult:
    return SendResult(
        provider, channel, "", leg_key(notification, channel, ""), time.time(), 0.0,
        failure=Failure(PERMANENT, reason, code=code, bad_address=bad_address),
    )


def _content_for(notification: Notification, channel: Channel,
                 content: ContentSource) -> Content | None:
    if isinstance(content, Content):
        return content
    if content is not None:
        return content.get(channel)
    return notification.content


async def guarded(provider: Provider, delivery: Delivery) -> SendResult:
    """``provider.send``, with an exception (a broken never-raise contract) as a failure."""
    try:
        return await provider.send(delivery)
    except Exception as exc:  # a provider broke its never-raise contract; record, never lose
        return SendResult(
            provider.name, delivery.channel, delivery.address, delivery.idempotency_key,
            time.time(), 0.0, failure=Failure(
                PERMANENT, f"provider {provider.name!r} raised {exc!r}", code="provider_error"),
        )


async def send_channel(
    notification: Notification, provider: Provider, content: ContentSource = None
) -> list[SendResult]:
    """Send over one provider's channel to every address the recipient has there."""
    channel = provider.channel
    rendered = _content_for(notification, channel, content)
    if rendered is None:
        return [_not_started(notification, channel, provider.name,
                             f"no rendered content for {channel}; render the template first",
                             "no_content")]
    legs = list(deliveries(notification, channel, rendered))
    if not legs:
        return [_not_started(notification, channel, provider.name,
                             f"recipient {notification.recipient.user_id!r} has no {channel} "
                             "address", "no_address", bad_address=True)]
    if len(legs) == 1:
        return [await guarded(provider, legs[0])]
    return list(await asyncio.gather(*(guarded(provider, leg) for leg in legs)))


async def fan_out(
    notification: Notification, providers: Sequence[Provider], content: ContentSource = None
) -> Dispatch:
    """Send over every provider's channel at once."""
    per_channel = await asyncio.gather(
        *(send_channel(notification, p, content) for p in providers))
    return Dispatch(notification, tuple(leg for legs in per_channel for leg in legs))


async def fall_back(
    notification: Notification, providers: Sequence[Provider], content: ContentSource = None
) -> Dispatch:
    """Try each provider in order until one channel delivers; e.g. push, then SMS.

    A channel counts as delivered when any of its legs succeeded (one device of several).
    """
    legs: list[SendResult] = []
    for provider in providers:
        results = await send_channel(notification, provider, content)
        legs.extend(results)
        if any(leg.ok for leg in results):
            break
    return Dispatch(notification, tuple(legs))
