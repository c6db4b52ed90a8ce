"""The notification pipeline, whose SMS provider (with ``KILL_AFTER_SEND=1``) kills its worker
right after the provider accepted a message: after the call, before any ack or ledger write."""

from __future__ import annotations

import os
import signal

from tidings.app import App
from tidings.notification import Channel
from tidings.pipelines.notifications import NotificationPipeline, providers_from_env
from tidings.sinks.base import Delivery, Provider, SendResult


class KillAfterSend:
    """Sends through ``inner``, then SIGKILLs this process."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel

    async def send(self, delivery: Delivery) -> SendResult:
        result = await self.inner.send(delivery)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


async def providers(app: App) -> dict[Channel, Provider]:
    found = await providers_from_env(app)
    if os.environ.get("KILL_AFTER_SEND") == "1":
        found["sms"] = KillAfterSend(found["sms"])
    return found


pipeline = NotificationPipeline(App("notifications"), providers=providers)
app = pipeline.app
