"""Recovery paths on real Redis: hand-back at shutdown, Redis 6.2's XAUTOCLAIM replies, a
rebalance that hits an error, and a small pool shared by many idle partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from tidings import App, Message, Settings
from tidings.connections import connect_redis
from tidings.streams import RedisTransport
from tidings.testing import MemoryTransport, running

pytestmark = [pytest.mark.redis]


async def test_release_makes_entries_of_every_lane_reclaimable_at_once(
    redis: Redis, namespace: str
) -> None:
    transport = RedisTransport(redis)
    lanes = [f"{namespace}:{{t:x:0}}:{lane}" for lane in ("high", "normal", "low")]
    held: dict[str, list[bytes]] = {}
    for lane in lanes:
        await transport.create_group(lane, "g")
        await transport.add([(lane, {b"d": b"1"})])
        held[lane] = [e.id for e in await transport.read("g", "me", [(lane, 10)])]
    for lane, ids in held.items():
        await transport.release(lane, "g", "me", ids)
    for lane in lanes:
        claimed = await transport.claim(lane, "g", "next-owner", 60_000, b"0-0", 10)
        assert [e.id for e in claimed.entries] == held[lane], lane


async def test_claim_reports_exact_delivery_counts(redis: Redis, namespace: str) -> None:
    transport = RedisTransport(redis)
    lane = f"{namespace}:{{t:x:0}}:normal"
    await transport.create_group(lane, "g")
    await transport.add([(lane, {b"d": b"1"})])
    await transport.read("g", "a", [(lane, 10)])
    for _ in range(3):
        claimed = await transport.claim(lane, "g", "b", 0, b"0-0", 10)
    assert [e.deliveries for e in claimed.entries] == [4]


async def test_a_deleted_pending_entry_is_found_and_acked_on_redis_6_2(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tidings import embedded

    home = tmp_path_factory.mktemp("redis62")
    server = embedded.start_redis(home)
    try:
        client = Redis.from_url(server.url)
        transport = RedisTransport(client)
        lane = "r62:{t:x:0}:normal"
        await transport.create_group(lane, "g")
        await transport.add([(lane, {b"d": str(i).encode()}) for i in range(3)])
        entries = await transport.read("g", "a", [(lane, 10)])
        await client.xdel(lane, entries[1].id)
        claimed = await transport.claim(lane, "g", "b", 0, b"0-0", 10)
        assert [e.id for e in claimed.entries] == [entries[0].id, entries[2].id]
        assert claimed.deleted == [entries[1].id]
        await transport.ack(lane, "g", claimed.deleted)
        assert (await client.xpending(lane, "g"))["pending"] == 2
        await client.aclose()
    finally:
        embedded.stop_all(home)


class FlakyJoin(MemoryTransport):
    """A memory transport whose member heartbeat fails once, as a Redis blip would."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_join = False

    async def join(self, members_key: str, member: str, ttl_ms: int) -> int:
        if self.fail_next_join:
            self.fail_next_join = False
            raise ConnectionError("connection reset by peer")
        return await super().join(members_key, member, ttl_ms)


async def test_an_error_while_rebalancing_does_not_stop_lease_renewal() -> None:
    app = App("recovery")
    app.agent(app.topic("r.jobs", partitions=2), name="r.agent")(_ignore)
    transport = FlakyJoin()
    settings = Settings(namespace="r", block_ms=20, lease_ttl_ms=300)
    async with running(app, settings, transport=transport) as harness:
        transport.fail_next_join = True
        await asyncio.sleep(1.0)  # a few lease lifetimes after the blip
        owner = harness.owners[0]
        assert owner._loop is not None
        assert not owner._loop.done()
        assert owner.owned == [0, 1]
        lease = app.get_topic("r.jobs").keys(0).lease("r.agent")
        assert not await transport.acquire_lease(lease, "intruder", 300)


async def test_many_idle_partitions_do_not_starve_a_small_pool(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    handled = asyncio.Event()

    async def note(message: Message[Any]) -> None:
        handled.set()

    app = App("pool")
    topic = app.topic("p.jobs", partitions=24)
    app.agent(topic, name="p.agent")(note)
    settings = Settings(
        redis_url=redis_url, namespace=namespace, redis_pool_size=4, block_ms=500,
        lease_ttl_ms=1500,
    )
    client = await connect_redis(redis_url, settings)
    blocking = await connect_redis(redis_url, settings)
    async with running(app, settings, transport=RedisTransport(client, blocking)) as harness:
        await asyncio.sleep(1.0)  # every reader idle in a blocking read
        await asyncio.wait_for(topic.send({"n": 1}, key="k"), 2)
        await asyncio.wait_for(handled.wait(), 3)
        assert harness.owners[0].owned == list(range(24))


async def _ignore(message: Message[Any]) -> None:
    return None
