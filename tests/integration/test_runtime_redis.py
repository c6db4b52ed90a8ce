"""The runtime's behaviour suite on a real Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from runtime_behaviour import TOPIC, Connect, Job, RuntimeBehaviour
from tidings import App, PartlyPublished, Settings
from tidings.message import HEADER_FIELD, PAYLOAD_FIELD, Envelope
from tidings.streams import RedisTransport

pytestmark = [pytest.mark.redis]


class TestRuntimeOnRedis(RuntimeBehaviour):
    @pytest.fixture
    async def connect(self, redis_url: str, namespace: str) -> AsyncIterator[Connect]:
        clients: list[Redis] = []

        def connect() -> RedisTransport:
            client = Redis.from_url(redis_url)
            clients.append(client)
            return RedisTransport(client)

        yield connect
        for client in clients:
            await client.aclose()
        async with Redis.from_url(redis_url) as admin:
            doomed = [key async for key in admin.scan_iter(match=f"{namespace}*", count=1000)]
            if doomed:
                await admin.delete(*doomed)


class TestPartlyPublished:
    """Redis can refuse one append of a pipelined batch (out of memory, a key of the wrong
    type) and take the others: the producer must learn which, or a retry sends twice."""

    @pytest.fixture
    async def producer(self, redis_url: str, namespace: str) -> AsyncIterator[tuple[App, Redis]]:
        app = App("suite-producer")
        app.topic(TOPIC, model=Job, partitions=4)
        client = Redis.from_url(redis_url)
        await app.start(Settings(namespace=namespace), transport=RedisTransport(client))
        try:
            yield app, client
        finally:
            await app.stop()
            await client.aclose()
            async with Redis.from_url(redis_url) as admin:
                doomed = [k async for k in admin.scan_iter(match=f"{namespace}*", count=1000)]
                if doomed:
                    await admin.delete(*doomed)

    @staticmethod
    def _broken_partition(app: App) -> tuple[str, list[str]]:
        """A normal-lane stream to break, and ten keys: every third lands on it."""
        topic = app.get_topic(TOPIC)
        keys = [f"user-{i}" for i in range(200)]
        broken = topic.partition_for(keys[0])
        on_it = [k for k in keys if topic.partition_for(k) == broken]
        elsewhere = [k for k in keys if topic.partition_for(k) != broken]
        chosen = [on_it[i // 3] if i % 3 == 0 else elsewhere[i] for i in range(10)]
        return topic.keys(broken).lanes[1], chosen

    async def test_send_many_names_the_values_that_were_not_published(
        self, producer: tuple[App, Redis]
    ) -> None:
        app, client = producer
        stream, keys = self._broken_partition(app)
        await client.set(stream, "not a stream")
        values = [Job(n=i, text=key) for i, key in enumerate(keys)]

        with pytest.raises(PartlyPublished, match=r"^4 of 10 messages were not published"
                           r" \(ResponseError: WRONGTYPE.*not published \(0, 3, 6, 9\)$") as caught:
            await app.get_topic(TOPIC).send_many(values, key=lambda v: v.text)

        assert sorted(caught.value.unpublished) == [0, 3, 6, 9]
        assert sorted(caught.value.published) == [1, 2, 4, 5, 7, 8]
        landed = [orjson.loads(fields[PAYLOAD_FIELD])["n"]
                  for lane in _lanes(app) if lane != stream
                  for _, fields in await client.xrange(lane)]
        assert sorted(landed) == [1, 2, 4, 5, 7, 8]
        assert app.get_topic(TOPIC).published == 6

    async def test_publish_many_keeps_each_id_beside_its_notification(
        self, producer: tuple[App, Redis]
    ) -> None:
        """One pipelined call for every lane: the ids come back in the order given (they
        came grouped by lane before), and one lane refusing does not hide the others."""
        app, client = producer
        topic = app.get_topic(TOPIC)
        values = [Job(n=i) for i in range(6)]
        lanes = ["low", "high", "normal", "high", "low", "normal"]

        ids = await topic.send_many(values, priority=lambda v: lanes[v.n])

        by_id = {}
        for lane in _lanes(app):
            for _, fields in await client.xrange(lane):
                envelope = Envelope.from_json(fields[HEADER_FIELD])
                by_id[envelope.id] = (orjson.loads(fields[PAYLOAD_FIELD])["n"], lane)
        assert [by_id[i][0] for i in ids] == list(range(6))
        assert [by_id[i][1].rsplit(":", 1)[-1] for i in ids] == lanes


def _lanes(app: App) -> list[str]:
    topic = app.get_topic(TOPIC)
    return [lane for p in range(topic.partitions) for lane in topic.keys(p).lanes]
