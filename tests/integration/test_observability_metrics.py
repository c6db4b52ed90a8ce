"""Metrics after a known workload on real Redis and PostgreSQL: exact counts, and a worker's
own /metrics and /health endpoints."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import App, Message, Reject, Settings, Worker
from tidings.database import create_engine, quote_ident
from tidings.observability.metrics import Metrics
from tidings.observability.sources import Sources
from tidings.streams import RedisTransport
from tidings.testing import running

pytestmark = [pytest.mark.redis]

TOPIC = "obs.jobs"
AGENT = "obs.work"
PUBLISHED = 50


def build() -> App:
    """50 jobs; the handler rejects every tenth, so 45 are processed and 5 dead-lettered."""
    app = App("obs")
    jobs = app.topic(TOPIC, partitions=2)

    @app.agent(jobs, name=AGENT)
    async def work(message: Message[dict[str, int]]) -> None:
        if message.value["n"] % 10 == 0:
            raise Reject("multiple of ten")

    return app


async def reports_lag(redis: Redis) -> bool:
    """Redis 7 reports each group's lag in XINFO GROUPS; 6.2 does not."""
    version = (await redis.info("server"))["redis_version"]
    return int(str(version).split(".")[0]) >= 7


def settings(redis_url: str, namespace: str, **extra: object) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, block_ms=50, claim_idle_ms=500,
                    **extra)


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics body, by name and label set."""
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(value for (metric, _), value in found.items() if metric == name)


async def test_metric_values_after_a_known_workload_are_exact(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    app = build()
    transport = RedisTransport(Redis.from_url(redis_url))
    async with running(app, settings(redis_url, namespace), transport=transport) as harness:
        await app.get_topic(TOPIC).send_many([{"n": n} for n in range(PUBLISHED)])
        await harness.drain()
        sources = Sources.from_app(app, owners=lambda: harness.owners)
        found = samples(await Metrics(sources, CollectorRegistry()).scrape())

    agent = frozenset({("topic", TOPIC), ("agent", AGENT)})
    assert found[("tidings_messages_processed_total", agent)] == 45
    assert found[("tidings_messages_rejected_total", agent)] == 5
    assert found[("tidings_messages_dead_lettered_total", agent)] == 5
    assert found[("tidings_messages_failed_total", agent)] == 0
    assert found[("tidings_partitions_owned", agent)] == 2
    assert found[("tidings_topic_partitions", frozenset({("topic", TOPIC)}))] == 2
    assert found[("tidings_messages_published_total", frozenset({("topic", TOPIC)}))] == 50
    assert total(found, "tidings_dead_letter_length") == 5
    assert total(found, "tidings_stream_pending") == 0
    assert total(found, "tidings_stream_oldest_pending_age_seconds") == 0
    assert found[("tidings_redis_up", frozenset())] == 1


async def test_stream_gauges_equal_what_redis_reports(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    app = build()
    topic = app.get_topic(TOPIC)
    await app.start(settings(redis_url, namespace))
    try:
        await topic.send_many([{"n": n} for n in range(PUBLISHED)])
        lane = topic.keys(0).lanes[1]
        await redis.xgroup_create(lane, AGENT, id="0")
        await redis.xreadgroup(AGENT, "someone", {lane: ">"}, count=3)
        found = samples(await Metrics(Sources.from_app(app), CollectorRegistry()).scrape())
    finally:
        await app.stop()

    where = {("topic", TOPIC), ("partition", "0"), ("lane", "normal")}
    assert found[("tidings_stream_length", frozenset(where))] == await redis.xlen(lane)
    group = frozenset({*where, ("group", AGENT)})
    assert found[("tidings_stream_pending", group)] == 3
    if await reports_lag(redis):
        assert found[("tidings_stream_lag", group)] == await redis.xlen(lane) - 3
    else:  # Redis 6.2 cannot tell it cheaply: absent, not a wrong number
        assert ("tidings_stream_lag", group) not in found
    assert 0 <= found[("tidings_stream_oldest_pending_age_seconds", group)] < 60


async def test_a_scrape_reports_redis_down_instead_of_failing(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    app = build()
    await app.start(settings(redis_url, namespace))
    try:
        sources = Sources.from_app(app)
        sources.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        found = samples(await Metrics(sources, CollectorRegistry()).scrape())
        await sources.redis.aclose()
    finally:
        await app.stop()

    assert found[("tidings_redis_up", frozenset())] == 0
    assert ("tidings_messages_processed_total",
            frozenset({("topic", TOPIC), ("agent", AGENT)})) in found


@pytest.mark.postgres
async def test_a_worker_with_an_http_port_serves_metrics_and_health(
    redis_url: str, database_url: str, namespace: str, schema_name: str, redis: Redis
) -> None:
    app = build()
    config = settings(redis_url, namespace, database_url=database_url,
                      database_schema=schema_name, heartbeat_interval_s=0.2)
    worker = Worker(app, config, http_port=0, http_host="127.0.0.1")
    task = asyncio.create_task(worker.run())
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            ready = await _until_ready(worker, http)
            assert ready.json()["status"] == "ready"
            assert worker.http is not None
            assert (await http.get(f"{worker.http.url}/health/live")).status_code == 200
            await app.get_topic(TOPIC).send_many([{"n": n} for n in range(PUBLISHED)])
            found = await _until_processed(worker, http, 45)
        live = frozenset({("topic", TOPIC), ("group", AGENT)})
        assert found[("tidings_consumer_instances_live", live)] == 1
        assert total(found, "tidings_messages_rejected_total") == 5
        assert found[("tidings_database_up", frozenset())] == 1
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await _drop_schema(database_url, schema_name)


async def _until_ready(worker: Worker, http: httpx.AsyncClient) -> httpx.Response:
    for _ in range(200):
        if worker.http is not None and worker.http.port:
            reply = await http.get(f"{worker.http.url}/health/ready")
            if reply.status_code == 200:
                return reply
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never turned ready")


async def _until_processed(
    worker: Worker, http: httpx.AsyncClient, count: int
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert worker.http is not None
    for _ in range(200):
        found = samples((await http.get(f"{worker.http.url}/metrics")).content)
        if total(found, "tidings_messages_processed_total") >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} messages processed")


async def _drop_schema(database_url: str, schema: str) -> None:
    engine = create_engine(database_url, schema=schema, pool_size=1, connect_timeout=5)
    with contextlib.suppress(Exception):
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
    await engine.dispose()


@pytest.mark.postgres
async def test_a_worker_whose_group_row_was_deleted_registers_it_again_and_beats_on(
    redis_url: str, database_url: str, namespace: str, schema_name: str
) -> None:
    config = settings(redis_url, namespace, database_url=database_url,
                      database_schema=schema_name, heartbeat_interval_s=0.1)
    worker = Worker(build(), config)
    task = asyncio.create_task(worker.run())
    engine = create_engine(database_url, schema=schema_name, pool_size=1, connect_timeout=5)
    try:
        await _until_rows(engine, "SELECT id FROM consumer_instances")
        async with engine.begin() as conn:  # an operator tidying up by hand
            await conn.execute(text("DELETE FROM consumer_groups"))

        await _until_rows(engine, "SELECT i.id FROM consumer_instances AS i"
                                  " JOIN consumer_groups AS g ON g.id = i.group_id"
                                  " WHERE i.last_heartbeat_at > now() - interval '1 second'")
    finally:
        await engine.dispose()
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await _drop_schema(database_url, schema_name)


async def _until_rows(engine: AsyncEngine, query: str) -> None:
    for _ in range(100):
        with contextlib.suppress(Exception):  # the schema may not be there yet
            async with engine.connect() as conn:
                if (await conn.execute(text(query))).first() is not None:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no row for {query!r}")
