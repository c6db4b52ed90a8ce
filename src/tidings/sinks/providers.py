"""Build the providers the settings describe: one per channel whose settings are complete,
each behind circuit breakers, with a failover account where one is configured."""

from __future__ import annotations

import ssl

import httpx

from tidings.notification import Channel
from tidings.sinks.base import Provider
from tidings.sinks.breaker import MemoryBreakerStore
from tidings.sinks.email_smtp import SmtpEmail
from tidings.sinks.failover import CircuitBreakers, FailoverProvider
from tidings.sinks.push_fcm import FcmPush
from tidings.sinks.settings import ProviderSettings
from tidings.sinks.sms_twilio import TwilioSms
from tidings.sinks.webhook import SignedWebhook


def build_providers(
    settings: ProviderSettings,
    client: httpx.AsyncClient,
    *,
    tls_context: ssl.SSLContext | None = None,
    breakers: CircuitBreakers | None = None,
) -> dict[Channel, Provider]:
    """Providers for every configured channel; a channel with no settings is left out.

    Each channel's providers sit behind ``breakers`` (pass ones on a Redis store so every
    process shares them; the default keeps them in this process): while a provider's breaker
    is open its channel fails over to the next provider, or its messages wait.
    ``client`` is shared by the HTTP providers and stays the caller's to close; call
    ``aclose()`` on every provider when done (the email provider then says QUIT).
    """
    s = settings
    chains: dict[Channel, list[Provider]] = {}
    if s.smtp_host:
        chains["email"] = [SmtpEmail.from_settings(s, tls_context)]
    if s.twilio_account_sid and s.twilio_auth_token:
        chains["sms"] = [TwilioSms.from_settings(s, client)]
    if s.twilio_failover_account_sid and s.twilio_failover_auth_token:
        chains.setdefault("sms", []).append(_twilio_failover(s, client))
    if s.fcm_project_id and s.fcm_access_token:
        chains["push"] = [FcmPush.from_settings(s, client)]
    if s.webhook_url and s.webhook_secret:
        chains["webhook"] = [SignedWebhook.from_settings(s, client)]
    shared = breakers or CircuitBreakers(MemoryBreakerStore())
    return {channel: FailoverProvider(chain, shared) for channel, chain in chains.items()}


def _twilio_failover(s: ProviderSettings, client: httpx.AsyncClient) -> TwilioSms:
    backup = s.model_copy(update={
        "twilio_base_url": s.twilio_failover_base_url or s.twilio_base_url,
        "twilio_account_sid": s.twilio_failover_account_sid,
        "twilio_auth_token": s.twilio_failover_auth_token,
        "twilio_from": s.twilio_failover_from or s.twilio_from,
    })
    sms = TwilioSms.from_settings(backup, client)
    sms.name = "twilio-failover"
    return sms
