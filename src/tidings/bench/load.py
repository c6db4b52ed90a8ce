"""The pipeline benchmark's paced load: a process of its own offering notifications at a fixed
rate, as producers do from outside a worker.

Run inside the worker's process, the publisher took the worker's CPU, and the notifications it
held made every collection of the older generations walk them: 55-70 ms pauses of the whole
event loop, which set the p99 (2026-12-03, measured with ``gc.callbacks``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tidings.app import App
from tidings.bench.stats import rate
from tidings.message import new_id
from tidings.notification import Channel, Notification
from tidings.pipelines.notifications import INTAKE
from tidings.settings import Settings

TEMPLATE = "bench.notice"
SAMPLES = 500
TICK_S = 0.005  # the paced publisher's step


def sample(n: int) -> list[Notification]:
    """``n`` template notifications, one leg each, over email / SMS / push."""
    channels: tuple[Channel, ...] = ("email", "sms", "push")
    out = []
    for i in range(n):
        user = f"user-{i % 5000}"
        out.append(Notification.model_validate({
            "type": "order.shipped", "channels": [channels[i % 3]], "template": TEMPLATE,
            "data": {"order_id": i, "carrier": "DHL"},
            "recipient": {"user_id": user, "email": f"{user}@example.com",
                          "phone": f"+1415555{i % 10_000:04d}", "device_tokens": [f"tok-{i}"],
                          "locale": "en-GB", "timezone": "Europe/London"},
        }))
    return out


def fresh(values: list[Notification], start: int, n: int) -> list[Notification]:
    """``n`` of ``values`` in turn from ``start``, each with an idempotency key of its own."""
    return [values[(start + i) % len(values)].model_copy(update={"idempotency_key": new_id()})
            for i in range(n)]


@dataclass(frozen=True)
class Offer:
    """``per_s`` for ``warmup_s`` (not measured), then for ``seconds`` (measured)."""

    per_s: int
    warmup_s: float
    seconds: float

    @property
    def warmup(self) -> int:
        return round(self.per_s * self.warmup_s)

    @property
    def measured(self) -> int:
        return max(1, round(self.per_s * self.seconds))


async def offer(config: Settings, load: Offer) -> AsyncIterator[float]:
    """Publish ``load``; yield the wall-clock time (ms) at which its measured part begins,
    then the rate achieved over that part."""
    app = App("bench-load")
    intake = app.topic(INTAKE, model=Notification)
    await app.start(config)
    try:
        values = sample(SAMPLES)
        for part, total in enumerate((load.warmup, load.measured)):
            if part == 1:
                yield time.time() * 1000
            start = time.perf_counter()
            sent = 0
            while sent < total:
                due = min(total, round(load.per_s * (time.perf_counter() - start)))
                if due > sent:
                    await intake.send_many(fresh(values, sent, due - sent),
                                           key=lambda v: v.recipient.user_id)
                    sent = due
                await asyncio.sleep(TICK_S)
            if part == 1:
                yield rate(total, time.perf_counter() - start)
    finally:
        await app.stop()


class Job(BaseModel):
    """What the load process is told: one line of JSON on its standard input."""

    settings: dict[str, Any]
    per_s: int
    warmup_s: float
    seconds: float


async def _main() -> None:
    job = Job.model_validate_json(sys.stdin.readline())
    config = Settings.model_validate(job.settings)
    async for figure in offer(config, Offer(job.per_s, job.warmup_s, job.seconds)):
        print(figure, flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
