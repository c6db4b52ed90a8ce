"""An example two-stage pipeline (orders -> confirmation e-mails), run end to end by
`tidings example`, and runnable as a worker: `tidings worker tidings.example:app`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tidings.app import App
from tidings.errors import TidingsError
from tidings.message import Message, now_ms
from tidings.settings import Settings
from tidings.worker import Worker

# A light pattern: full RFC validation (EmailStr) costs ~100 µs a message, most of this example.
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Order(BaseModel):
    order_id: int
    customer: str
    email: str = Field(pattern=EMAIL)
    total: float = Field(ge=0)


class Confirmation(BaseModel):
    to: str = Field(pattern=EMAIL)
    subject: str
    order_id: int
    created_ms: int


def build() -> tuple[App, dict[str, Any]]:
    """The example app, and the record its last stage keeps of what it delivered."""
    app = App("example")
    orders = app.topic("example.orders", model=Order)
    confirmations = app.topic("example.confirmations", model=Confirmation)
    delivered: dict[str, Any] = {"count": 0, "latencies_ms": []}

    @app.agent(orders, name="example.confirm", concurrency=4)
    async def confirm(message: Message[Order]) -> None:
        order = message.value
        await confirmations.send(
            Confirmation(
                to=order.email, subject=f"Order {order.order_id} confirmed",
                order_id=order.order_id, created_ms=message.envelope.created_ms,
            ),
            key=message.key,
        )

    @app.agent(confirmations, name="example.deliver", concurrency=4)
    async def deliver(message: Message[Confirmation]) -> None:
        delivered["count"] += 1
        delivered["latencies_ms"].append(now_ms() - message.value.created_ms)

    return app, delivered


app, _ = build()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_example(settings: Settings, count: int, json_output: bool, out: Console) -> None:
    example, delivered = build()
    worker = Worker(example, settings, name="example")
    running = asyncio.create_task(worker.run())
    try:
        while not example.started:
            if running.done():
                running.result()
            await asyncio.sleep(0.05)
        orders = example.get_topic("example.orders")
        started = time.perf_counter()
        with Progress(console=out, transient=True, disable=json_output) as progress:
            task = progress.add_task("publishing orders", total=count)
            for start in range(0, count, 500):
                batch = [
                    Order(order_id=i, customer=f"c{i % 97}", email=f"c{i % 97}@example.com",
                          total=i % 500)
                    for i in range(start, min(start + 500, count))
                ]
                await orders.send_many(batch, key=lambda o: o.customer)
                progress.advance(task, len(batch))
            task = progress.add_task("delivering", total=count)
            deadline = time.monotonic() + 60 + count / 500
            while delivered["count"] < count:
                if time.monotonic() > deadline:
                    raise TidingsError(f"only {delivered['count']} of {count} delivered in time")
                progress.update(task, completed=delivered["count"])
                await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.request_stop()
        await running
    latencies = delivered["latencies_ms"]
    summary = {
        "orders": count,
        "delivered": delivered["count"],
        "seconds": round(elapsed, 3),
        "per_second": round(count / elapsed, 1),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p99_ms": _percentile(latencies, 0.99),
        "redis": example.redis_url,
        "dead_lettered": sum(a.stats.dead_lettered for a in example.agents.values()),
    }
    if json_output:
        out.print(orjson.dumps(summary).decode(), highlight=False, soft_wrap=True)
        return
    table = Table(title="tidings example: orders -> confirmations")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        table.add_row(name, str(value))
    out.print(table)
    if settings.redis_url is None or settings.database_url is None:
        out.print(f"embedded servers keep their data in {settings.home};"
                  " stop them with `tidings embedded stop`")
