"""Every real provider against the local stand-ins at once, as `tidings demo` will use them."""

from __future__ import annotations

import httpx
import pytest

from tidings.capture import LocalProviders
from tidings.notification import parse_notification
from tidings.sinks import ProviderSettings, build_providers, fan_out


@pytest.mark.parametrize("tls", [True, False])
async def test_one_notification_fans_out_to_all_four_channels(tls: bool) -> None:
    n = parse_notification({
        "type": "order.shipped", "channels": ["email", "sms", "push", "webhook"],
        "idempotency_key": "order-99",
        "recipient": {"user_id": "u-99", "email": "ada@example.com", "phone": "+14155550123",
                      "device_tokens": ["device-1", "device-2"]},
        "content": {"subject": "Shipped", "title": "Shipped", "body": "Order 99 is on its way"},
    })
    async with LocalProviders(tls=tls) as local, httpx.AsyncClient() as client:
        providers = build_providers(local.settings, client, tls_context=local.client_tls)
        dispatch = await fan_out(n, list(providers.values()))
        for provider in providers.values():
            await provider.aclose()
        assert [leg.failure for leg in dispatch.legs] == [None] * 5
        assert dispatch.delivered == ("email", "sms", "push", "webhook")
        assert local.smtp.received == 1
        assert local.smtp.messages[0].tls is tls
        assert len(local.http.sms) == 1
        assert [p.token for p in local.http.push] == ["device-1", "device-2"]
        assert local.http.counts.webhook == 1
        assert local.http.counts.bad_signatures == 0


def test_only_configured_channels_get_a_provider() -> None:
    settings = ProviderSettings(twilio_account_sid="AC1", twilio_auth_token="t",
                                twilio_from="+15005550006")
    assert list(build_providers(settings, httpx.AsyncClient())) == ["sms"]
