"""The notification pipeline's delivery metrics after a known workload, scraped the way a
worker's /metrics does (Sources.from_app): exact counts per channel / provider / tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy import text

from tidings import Settings
from tidings.connections import connect_redis, open_database
from tidings.notification import Channel, Notification, parse_notification
from tidings.observability.metrics import Metrics
from tidings.observability.sources import Sources
from tidings.pipelines.ledger import MessageRecord
from tidings.pipelines.notifications import NotificationPipeline, build
from tidings.pipelines.routing import Rule
from tidings.retry import RetryPolicies, RetryPolicy
from tidings.sinks.base import (
    TRANSIENT,
    Delivery,
    Failure,
    NoopProvider,
    Provider,
    SendResult,
    Stopwatch,
)
from tidings.streams import RedisTransport
from tidings.testing import Harness, running

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

# Two attempts, 50 ms apart: a transient failure is retried once, then dead.
TWICE = RetryPolicy(strategy="fixed", base=0.05, max_attempts=2)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class BusySms:
    """An SMS provider that is always busy (a transient failure)."""

    name = "busy-sms"
    channel: Channel = "sms"

    async def send(self, delivery: Delivery) -> SendResult:
        return Stopwatch(self.name, delivery).failed(Failure(TRANSIENT, "busy", code="busy"))

    async def aclose(self) -> None:
        pass


async def providers(_: Any) -> dict[Channel, Provider]:
    return {"email": NoopProvider("email", name="mailer"), "sms": BusySms(),
            "push": NoopProvider("push", name="pusher")}


@pytest.fixture
async def world(
    redis_url: str, database_url: str, namespace: str, schema_name: str
) -> AsyncIterator[tuple[NotificationPipeline, Harness]]:
    settings = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                        database_schema=schema_name, block_ms=50, partitions=1)
    pipeline = build("metrics", providers=providers,
                     rules=[Rule("marketing.*", deny=("push",))])
    pipeline.app.retry_policies = RetryPolicies(default=TWICE, by_type={"**": TWICE})
    redis = await connect_redis(redis_url, settings)
    blocking = await connect_redis(redis_url, settings)
    try:
        async with running(pipeline.app, settings, transport=RedisTransport(redis, blocking),
                           database=True) as harness:
            yield pipeline, harness
    finally:
        async with Redis.from_url(redis_url) as admin:
            doomed = [k async for k in admin.scan_iter(match=f"{namespace}*", count=1000)]
            if doomed:
                await admin.delete(*doomed)
        engine = await open_database(settings)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE'))
        await engine.dispose()


def notification(tenant: str, channels: list[str], **changes: Any) -> Notification:
    data: dict[str, Any] = {
        "type": "order.shipped", "tenant": tenant, "channels": channels,
        "recipient": {"user_id": "u-1", "email": "ada@example.com", "phone": "+14155550123",
                      "device_tokens": ["device-1"]},
        "content": {"subject": "Shipped", "title": "Shipped", "body": "Order 7 is on its way"},
    }
    data.update(changes)
    return parse_notification(data)


def samples(exposition: bytes) -> Samples:
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def deliveries(found: Samples) -> dict[tuple[str, str, str, str], float]:
    """(channel, provider, tenant, outcome) -> count."""
    return {
        (d["channel"], d["provider"], d["tenant"], d["outcome"]): value
        for (name, labels), value in found.items() if name == "tidings_deliveries_total"
        for d in [dict(labels)]
    }


async def test_delivery_outcomes_and_latencies_after_a_known_workload(
    world: tuple[NotificationPipeline, Harness],
) -> None:
    pipeline, harness = world
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await pipeline.publish_many([
        *(notification("acme", ["email"]) for _ in range(3)),
        notification("globex", ["sms"]),  # busy: failed, retried, failed again, dead
        notification("acme", ["push"], type="marketing.promo"),  # denied by rule: filtered
        notification("acme", ["email"], send_at=later),  # delayed
    ])
    await harness.drain(within=30)
    sources = Sources.from_app(pipeline.app, owners=lambda: harness.owners)
    found = samples(await Metrics(sources, CollectorRegistry()).scrape())

    # the pipeline's metrics are shared by all stages and exported once
    assert [c for c in sources.collectors if c is pipeline.metrics] == [pipeline.metrics]
    assert deliveries(found) == {
        ("email", "mailer", "acme", "sent"): 3,
        ("sms", "busy-sms", "globex", "failed"): 2,
        ("sms", "busy-sms", "globex", "retried"): 1,
        ("sms", "busy-sms", "globex", "dead"): 1,
        ("push", "none", "acme", "filtered"): 1,
        ("email", "none", "acme", "delayed"): 1,
    }
    email = frozenset({("channel", "email"), ("provider", "mailer")})
    assert found[("tidings_delivery_latency_seconds_count", email)] == 3
    assert ("tidings_delivery_latency_seconds_count",
            frozenset({("channel", "sms"), ("provider", "busy-sms")})) not in found
    calls = {dict(labels)["outcome"]: value for (name, labels), value in found.items()
             if name == "tidings_provider_call_seconds_count"}
    assert calls == {"sent": 3, "transient": 2}
    assert found[("tidings_ledger_flush_rows_count", frozenset())] >= 1
    intake = frozenset({("topic", "notifications"), ("agent", "notify.intake")})
    assert found[("tidings_handler_seconds_count", intake)] >= 1


async def test_ledger_flushes_report_their_rows(
    world: tuple[NotificationPipeline, Harness],
) -> None:
    pipeline, _ = world
    ledger = pipeline.services.ledger
    await ledger.flush()
    before = pipeline.metrics.flush_rows.count, pipeline.metrics.flush_rows.sum
    await ledger.record_message(MessageRecord("m-1", "notifications", {}))
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        await ledger.record_delivery("m-1", "email", address, "filtered")
    await ledger.flush()

    after = pipeline.metrics.flush_rows.count, pipeline.metrics.flush_rows.sum
    assert (after[0] - before[0], after[1] - before[1]) == (1, 4)  # one message, 3 deliveries
