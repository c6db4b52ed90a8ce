"""Build the providers the settings describe: one per channel whose settings are complete."""

from __future__ import annotations

import ssl

import httpx

from tidings.notification import Channel
from tidings.sinks.base import Provider
from tidings.sinks.email_smtp import SmtpEmail
from tidings.sinks.push_fcm import FcmPush
from tidings.sinks.settings import ProviderSettings
from tidings.sinks.sms_twilio import TwilioSms
from tidings.sinks.webhook import SignedWebhook


def build_providers(
    settings: ProviderSettings,
    client: httpx.AsyncClient,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> dict[Channel, Provider]:
    """Providers for every configured channel; a channel with no settings is left out.

    ``client`` is shared by the HTTP providers and stays the caller's to close; call
    ``aclose()`` on every provider when done (the email provider then says QUIT).
    """
    s = settings
    providers: dict[Channel, Provider] = {}
    if s.smtp_host:
        providers["email"] = SmtpEmail.from_settings(s, tls_context)
    if s.twilio_account_sid and s.twilio_auth_token:
        providers["sms"] = TwilioSms.from_settings(s, client)
    if s.fcm_project_id and s.fcm_access_token:
        providers["push"] = FcmPush.from_settings(s, client)
    if s.webhook_url and s.webhook_secret:
        providers["webhook"] = SignedWebhook.from_settings(s, client)
    return providers
