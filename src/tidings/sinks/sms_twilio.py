"""SMS through a Twilio-compatible REST API (form-encoded POST, JSON reply with a ``sid``)."""

from __future__ import annotations

import httpx

from tidings.errors import ConfigurationError
from tidings.notification import Channel
from tidings.sinks.base import Delivery, SendResult, Stopwatch
from tidings.sinks.http import garbage_failure, json_object, post, snippet, status_failure
from tidings.sinks.settings import ProviderSettings

# Twilio error codes that mean the number itself cannot receive: invalid 'To', not a mobile
# number, unsubscribed (replied STOP), unreachable region.
BAD_NUMBER_CODES = frozenset({21211, 21214, 21408, 21610, 21612, 21614})


class TwilioSms:
    """Sends SMS with ``POST /2010-04-01/Accounts/{sid}/Messages.json``.

    Our idempotency key travels in the ``Idempotency-Key`` header so that a compatible
    provider drops a retried duplicate.
    """

    channel: Channel = "sms"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        account_sid: str,
        auth_token: str,
        sender: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str = "https://api.twilio.com",
        name: str = "twilio",
    ) -> None:
        if not (sender or messaging_service_sid):
            raise ConfigurationError(
                "TwilioSms needs a sender: set TIDINGS_TWILIO_FROM or "
                "TIDINGS_TWILIO_MESSAGING_SERVICE_SID"
            )
        self.name = name
        self._client = client
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._sender = {"From": sender} if sender else {
            "MessagingServiceSid": messaging_service_sid or ""}

    @classmethod
    def from_settings(cls, settings: ProviderSettings, client: httpx.AsyncClient) -> TwilioSms:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise ConfigurationError(
                "SMS needs TIDINGS_TWILIO_ACCOUNT_SID and TIDINGS_TWILIO_AUTH_TOKEN"
            )
        return cls(
            client,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            sender=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            base_url=settings.twilio_base_url,
        )

    async def send(self, delivery: Delivery) -> SendResult:
        watch = Stopwatch(self.name, delivery)
        reply = await post(
            self._client, self._url, auth=self._auth,
            data={"To": delivery.address, **self._sender, "Body": delivery.content.body},
            headers={"Idempotency-Key": delivery.idempotency_key},
        )
        if not isinstance(reply, httpx.Response):
            return watch.failed(reply)
        body = json_object(reply)
        if reply.is_success:
            sid = body.get("sid") if body else None
            if not isinstance(sid, str) or not sid:
                return watch.failed(garbage_failure(reply, "no message 'sid' in the reply"))
            return watch.sent(sid)
        if body is None:
            return watch.failed(status_failure(
                reply, f"error reply is not JSON: {snippet(reply.content)}"
            ))
        code = body.get("code")
        code = code if isinstance(code, int | str) else None  # any other shape: the status says
        message = body.get("message") or "no message given"
        return watch.failed(status_failure(
            reply, f"Twilio error {code}: {message}",
            code=str(code) if code is not None else None,
            bad_address=code in BAD_NUMBER_CODES,
        ))

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client is the caller's."""
