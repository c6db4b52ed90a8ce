"""Push through an FCM HTTP v1-compatible API (``POST /v1/projects/{p}/messages:send``).

FCM accepts no idempotency key, so a retried push may arrive twice; the notification's key is
sent in the message ``data`` (``tidings_key``) so the app can drop a duplicate.
Minting OAuth 2 tokens from a service-account key is not done here: pass a token function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tidings.errors import ConfigurationError
from tidings.notification import Channel
from tidings.sinks.base import TRANSIENT, Delivery, Failure, SendResult, Stopwatch
from tidings.sinks.http import garbage_failure, json_object, post, snippet, status_failure
from tidings.sinks.settings import ProviderSettings

TokenSource = Callable[[], Awaitable[str]]

# FCM error codes that mean the device token is dead: drop it, do not retry.
BAD_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})


def static_token(token: str) -> TokenSource:
    async def source() -> str:
        return token

    return source


def _error_code(error: dict[str, Any]) -> str | None:
    """The most specific code: ``details[].errorCode`` (FcmError), else ``status``."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    status = error.get("status")
    return status if isinstance(status, str) else None


class FcmPush:
    """Sends one push per device token with a Bearer token from ``token_source``."""

    channel: Channel = "push"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        project_id: str,
        token_source: TokenSource,
        base_url: str = "https://fcm.googleapis.com",
        name: str = "fcm",
    ) -> None:
        self.name = name
        self._client = client
        self._tokens = token_source
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"

    @classmethod
    def from_settings(cls, settings: ProviderSettings, client: httpx.AsyncClient) -> FcmPush:
        if not (settings.fcm_project_id and settings.fcm_access_token):
            raise ConfigurationError("push needs TIDINGS_FCM_PROJECT_ID and "
                                     "TIDINGS_FCM_ACCESS_TOKEN")
        return cls(
            client,
            project_id=settings.fcm_project_id,
            token_source=static_token(settings.fcm_access_token.get_secret_value()),
            base_url=settings.fcm_base_url,
        )

    def _message(self, delivery: Delivery) -> dict[str, Any]:
        content = delivery.content
        notification = {"body": content.body}
        if content.title or content.subject:
            notification["title"] = content.title or content.subject or ""
        return {"message": {
            "token": delivery.address,
            "notification": notification,
            "data": {
                "tidings_type": delivery.notification.type,
                "tidings_key": delivery.idempotency_key,
            },
        }}

    async def send(self, delivery: Delivery) -> SendResult:
        watch = Stopwatch(self.name, delivery)
        try:
            bearer = await self._tokens()
        except Exception as exc:  # a token source is user code: record, never raise
            return watch.failed(Failure(TRANSIENT, f"no FCM access token: {exc!r}",
                                        code="token_source"))
        reply = await post(self._client, self._url, json=self._message(delivery),
                           headers={"Authorization": f"Bearer {bearer}"})
        if not isinstance(reply, httpx.Response):
            return watch.failed(reply)
        body = json_object(reply)
        if reply.is_success:
            name = body.get("name") if body else None
            if not isinstance(name, str) or not name:
                return watch.failed(garbage_failure(reply, "no message 'name' in the reply"))
            return watch.sent(name.rsplit("/", 1)[-1])
        error = body.get("error") if body else None
        if not isinstance(error, dict):
            return watch.failed(status_failure(
                reply, f"error reply is not FCM JSON: {snippet(reply.content)}"))
        code = _error_code(error)
        return watch.failed(status_failure(
            reply, f"FCM {code}: {error.get('message') or 'no message given'}",
            code=code, bad_address=code in BAD_TOKEN_CODES,
        ))

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client is the caller's."""
