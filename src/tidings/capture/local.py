"""Both capture servers started together, and the ProviderSettings that point at them."""

from __future__ import annotations

import ssl
from types import TracebackType

from tidings.capture.certs import local_tls
from tidings.capture.http import HttpCapture
from tidings.capture.smtp import SmtpCapture
from tidings.sinks.settings import ProviderSettings

SMTP_USER, SMTP_PASSWORD = "tidings", "local-smtp-password"
TWILIO_SID, TWILIO_TOKEN = "AClocal", "local-twilio-token"
FCM_PROJECT, FCM_TOKEN = "tidings-local", "local-fcm-token"
WEBHOOK_SECRET = "local-webhook-secret"


class LocalProviders:
    """A local SMTP server (STARTTLS + AUTH by default) and the HTTP provider stand-in.

    After ``start`` (or ``async with``), ``settings`` configures every provider to use them
    and ``client_tls`` is the context that trusts the SMTP server's one-off certificate.
    """

    def __init__(self, *, tls: bool = True, host: str = "127.0.0.1", keep: int = 10_000,
                 seed: int = 0) -> None:
        self._material = local_tls(("localhost", host)) if tls else None
        self.client_tls: ssl.SSLContext | None = (
            self._material.client_context() if self._material else None)
        self.smtp = SmtpCapture(
            host=host, keep=keep,
            tls=self._material.server_context() if self._material else None,
            credentials={SMTP_USER: SMTP_PASSWORD} if self._material else None,
        )
        self.http = HttpCapture(host=host, keep=keep, seed=seed,
                                twilio_credentials=(TWILIO_SID, TWILIO_TOKEN),
                                fcm_token=FCM_TOKEN, webhook_secret=WEBHOOK_SECRET)

    @property
    def settings(self) -> ProviderSettings:
        tls = self._material is not None
        return ProviderSettings(
            # 'localhost' so the certificate's name matches; the capture listens on host.
            smtp_host="localhost" if tls else self.smtp.host, smtp_port=self.smtp.port,
            smtp_username=SMTP_USER if tls else None,
            smtp_password=SMTP_PASSWORD if tls else None,
            smtp_starttls=tls, smtp_from="tidings demo <demo@tidings.local>",
            twilio_base_url=self.http.url, twilio_account_sid=TWILIO_SID,
            twilio_auth_token=TWILIO_TOKEN, twilio_from="+15005550006",
            fcm_base_url=self.http.url, fcm_project_id=FCM_PROJECT, fcm_access_token=FCM_TOKEN,
            webhook_url=f"{self.http.url}/webhooks/tidings", webhook_secret=WEBHOOK_SECRET,
        )

    async def start(self) -> LocalProviders:
        await self.smtp.start()
        try:
            await self.http.start()
        except BaseException:
            await self.smtp.stop()
            raise
        return self

    async def stop(self) -> None:
        try:
            await self.http.stop()
        finally:
            await self.smtp.stop()

    async def __aenter__(self) -> LocalProviders:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
