"""The runtime's behaviour suite, written once and run on two transports.

`tests/unit/test_runtime_memory.py` runs it on `MemoryTransport`, and
`tests/integration/test_runtime_redis.py` on real Redis; each subclass only provides the
`connect` fixture: a factory of transports that all reach one shared stream store.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tidings import App, Message, PayloadError, Priority, Reject, Retry, Settings
from tidings.batch import Batch
from tidings.consumer import PartitionConsumer
from tidings.keys import PartitionKeys
from tidings.message import PAYLOAD_FIELD, Envelope, encode, new_id, now_ms
from tidings.retry import RetryPolicy
from tidings.streams import RedisTransport
from tidings.testing import Harness, MemoryTransport, running
from tidings.transport import Transport, pack_delayed

TOPIC = "suite.jobs"
AGENT = "suite.record"

Connect = Callable[[], Transport]
Behave = Callable[[Message[Any]], Awaitable[None]]


class Job(BaseModel):
    n: int
    text: str = ""


class Recorder:
    """The agent's handler: remembers every call and every message it handled successfully."""

    def __init__(self, behave: Behave | None = None) -> None:
        self.behave = behave
        self.calls: list[Message[Job]] = []
        self.handled: list[Message[Job]] = []

    async def __call__(self, message: Message[Job]) -> None:
        self.calls.append(message)
        if self.behave is not None:
            await self.behave(message)
        self.handled.append(message)


def build(
    recorder: Recorder, *, partitions: int = 4, concurrency: int = 1,
    retry: RetryPolicy | None = None,
) -> App:
    """The pipeline under test; calling it twice gives two processes' view of one app."""
    app = App("suite")
    jobs = app.topic(TOPIC, model=Job, partitions=partitions)
    app.agent(jobs, name=AGENT, concurrency=concurrency, retry=retry)(recorder)
    return app


# Quick retries for tests: 20 ms apart, three attempts in all.
FAST = RetryPolicy(strategy="fixed", base=0.02, max_delay=1, max_attempts=3)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {within}s")
        await asyncio.sleep(0.01)


async def stream_entries(
    transport: Transport, stream: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of one stream, oldest first (the Transport protocol has no range read)."""
    if isinstance(transport, MemoryTransport):
        state = transport.streams.get(stream)
        if state is None:
            return []
        return [(f"{i[0]}-{i[1]}".encode(), f) for i, f in sorted(state.entries.items())]
    assert isinstance(transport, RedisTransport)
    return list(await transport.client.xrange(stream))


def envelope_ids(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    return [Envelope.from_json(fields[b"e"]).id for _, fields in entries]


async def pending(app: App) -> int:
    topic = app.get_topic(TOPIC)
    total = 0
    for partition in range(topic.partitions):
        keys = topic.keys(partition)
        for lane in (*keys.lanes, keys.retry(AGENT)):
            total += sum(g.pending for g in await app.transport.groups(lane) if g.name == AGENT)
    return total


async def delayed(app: App) -> int:
    """Retries of the agent waiting in its delay sets."""
    topic = app.get_topic(TOPIC)
    transport = app.transport
    total = 0
    for partition in range(topic.partitions):
        key = topic.keys(partition).delayed(AGENT)
        if isinstance(transport, MemoryTransport):
            total += len(transport.delayed.get(key, {}))
        else:
            assert isinstance(transport, RedisTransport)
            total += await transport.client.zcard(key)
    return total


async def published(app: App) -> int:
    topic = app.get_topic(TOPIC)
    return sum(
        [await app.transport.length(lane)
         for partition in range(topic.partitions) for lane in topic.keys(partition).lanes]
    )


async def dead_letters(app: App, partition: int = 0) -> list[dict[bytes, bytes]]:
    dead = app.get_topic(TOPIC).keys(partition).dead
    return [fields for _, fields in await stream_entries(app.transport, dead)]


def reader(harness: Harness, partition: int) -> PartitionConsumer:
    return harness.owners[0].running[partition][0]


def tuned(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


async def always_fail(message: Message[Any]) -> None:
    raise RuntimeError("provider is down")


class RuntimeBehaviour:
    """Publishing, consuming, redelivery, dead letters, trimming, priorities, sharing."""

    @pytest.fixture
    def settings(self, namespace: str) -> Settings:
        return Settings(
            namespace=namespace, block_ms=50, claim_idle_ms=300, lease_ttl_ms=600,
            trim_interval_s=0.1, max_deliveries=3, shutdown_timeout_s=5,
        )

    # -- the happy path ---------------------------------------------------------------

    async def test_published_messages_are_handled_and_acked(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorder = Recorder()
        app = build(recorder)
        async with running(app, settings, transport=connect()) as harness:
            ids = await app.get_topic(TOPIC).send_many(
                [Job(n=i) for i in range(40)], key=lambda job: f"customer-{job.n % 7}"
            )
            await harness.drain()
            assert sorted(m.id for m in recorder.handled) == sorted(ids)
            assert await pending(app) == 0

    async def test_an_idle_reader_only_blocks_and_wakes_for_a_new_message(
        self, settings: Settings, connect: Connect
    ) -> None:
        # A read that does not block first costs a round trip per lane; idle, it finds
        # nothing a blocking read would not find at once.
        reads: list[int | None] = []
        transport = connect()
        read = transport.read

        async def counted(group: str, consumer: str, counts: Any, acks: Any = (),
                          block_ms: int | None = None) -> Any:
            reads.append(block_ms)
            return await read(group, consumer, counts, acks, block_ms=block_ms)

        transport.read = counted  # type: ignore[method-assign]
        recorder = Recorder()
        app = build(recorder, partitions=1)
        async with running(app, settings, transport=transport):
            await until(lambda: any(block is not None for block in reads))
            await asyncio.sleep(0.5)  # about ten blocking reads of block_ms 50
            first_block = next(i for i, block in enumerate(reads) if block is not None)
            idle = reads[first_block:]
            assert len(idle) >= 5
            assert None not in idle
            await app.get_topic(TOPIC).send(Job(n=1))
            await until(lambda: len(recorder.handled) == 1, within=2)

    async def test_a_reader_whose_lease_lapsed_while_a_batch_settled_reads_no_more(
        self, settings: Settings, connect: Connect
    ) -> None:
        handled: list[int] = []
        settling = asyncio.Event()
        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)

        async def slow_write() -> None:  # the deferred ledger write of a slow database
            settling.set()
            await asyncio.sleep(0.3)

        @app.agent(jobs, name=AGENT, batch=True)
        async def record(batch: Batch[Job]) -> None:
            handled.extend(m.value.n for m in batch)
            batch.defer(slow_write)

        transport = connect()

        async def renewals_fail(*args: Any, **kwargs: Any) -> list[bool]:
            raise ConnectionError("renewals do not land")

        async def held_elsewhere(*args: Any, **kwargs: Any) -> bool:
            return False

        async with running(app, tuned(settings, claim_idle_ms=5000),
                           transport=transport) as harness:
            await jobs.send(Job(n=1))
            await settling.wait()
            transport.renew_leases = renewals_fail  # type: ignore[method-assign]
            transport.acquire_lease = held_elsewhere  # type: ignore[method-assign]
            await asyncio.sleep(0.05)  # the reader waits for the settle before it reads
            reader(harness, 0).lease_until = 0.0  # lapsed: another process may own it now
            await jobs.send(Job(n=2))
            await asyncio.sleep(0.8)
            assert handled == [1]

    async def test_each_key_keeps_its_order_under_concurrent_handlers(
        self, settings: Settings, connect: Connect
    ) -> None:
        in_flight, most = 0, 0

        async def jitter(message: Message[Any]) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(random.random() / 500)
            in_flight -= 1

        recorder = Recorder(jitter)
        app = build(recorder, partitions=4, concurrency=4)
        async with running(app, tuned(settings, batch_size=20), transport=connect()) as harness:
            jobs = [Job(n=i, text=f"key-{i % 8}") for i in range(320)]
            await app.get_topic(TOPIC).send_many(jobs, key=lambda job: job.text)
            await harness.drain(within=20)
        by_key: dict[str | None, list[int]] = {}
        for message in recorder.handled:
            by_key.setdefault(message.key, []).append(message.value.n)
        assert by_key == {f"key-{k}": list(range(k, 320, 8)) for k in range(8)}
        assert most > 1, "handlers never ran concurrently, so order was not put to the test"

    # -- failures ---------------------------------------------------------------------

    async def test_a_failing_handler_parks_its_message_in_the_delay_set(
        self, settings: Settings, connect: Connect
    ) -> None:
        failed = asyncio.Event()

        async def fail(message: Message[Any]) -> None:
            failed.set()
            raise RuntimeError("provider is down")

        app = build(Recorder(fail), retry=RetryPolicy(strategy="fixed", base=30))
        async with running(app, settings, transport=connect()):
            await app.get_topic(TOPIC).send(Job(n=1))
            await asyncio.wait_for(failed.wait(), 5)
            await until(lambda: app.agents[AGENT].stats.retried == 1)
            assert await pending(app) == 0, "parked and acked: it blocks nothing while it waits"
            assert await delayed(app) == 1
            assert app.agents[AGENT].stats.failed == 1

    async def test_a_failed_message_is_retried_with_its_attempt_and_error_history(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def fail_once(message: Message[Any]) -> None:
            if message.envelope.attempt == 1:
                raise RuntimeError("provider is down")

        recorder = Recorder(fail_once)
        app = build(recorder, retry=FAST)
        async with running(app, settings, transport=connect()) as harness:
            msg_id = await app.get_topic(TOPIC).send(Job(n=1))
            await harness.drain()
            assert [(m.id, m.envelope.attempt) for m in recorder.calls] == [(msg_id, 1),
                                                                            (msg_id, 2)]
            assert [m.id for m in recorder.handled] == [msg_id]
            [error] = orjson.loads(recorder.calls[1].headers["tidings.errors"])
            assert error["attempt"] == 1
            assert error["type"] == "RuntimeError"
            assert error["message"] == "RuntimeError: provider is down"
            assert await pending(app) == 0
            assert app.agents[AGENT].stats.retried == 1

    async def test_a_message_failing_every_attempt_is_dead_lettered_as_exhausted(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorder = Recorder(always_fail)
        app = build(recorder, partitions=1, retry=FAST)
        async with running(app, settings, transport=connect()) as harness:
            msg_id = await app.get_topic(TOPIC).send(Job(n=13, text="doomed"))
            await harness.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"exhausted"
            assert dead[b"dead.attempts"] == b"3"
            assert dead[b"dead.error_type"] == b"RuntimeError"
            assert b"gave up after attempt 3" in dead[b"dead.reason"]
            envelope = Envelope.from_json(dead[b"e"])
            assert envelope.id == msg_id
            assert [e["attempt"] for e in orjson.loads(envelope.headers["tidings.errors"])] == [
                1, 2]
            assert orjson.loads(dead[b"d"]) == {"n": 13, "text": "doomed"}
            assert len(recorder.calls) == 3
            assert app.agents[AGENT].stats.exhausted == 1
            assert await pending(app) == 0

    async def test_retries_stop_at_the_policy_deadline_counted_from_the_first_failure(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorder = Recorder(always_fail)
        policy = RetryPolicy(strategy="fixed", base=0.05, max_attempts=1000, deadline=0.3)
        app = build(recorder, partitions=1, retry=policy)
        async with running(app, settings, transport=connect()) as harness:
            await app.get_topic(TOPIC).send(Job(n=1))
            await harness.drain()
            [dead] = await dead_letters(app)
        assert dead[b"dead.kind"] == b"exhausted"
        assert 3 <= len(recorder.calls) <= 8, "about 0.3 s of 50 ms retries, not 1000 attempts"
        since = {m.headers.get("tidings.failing_since") for m in recorder.calls[1:]}
        assert len(since) == 1, "every retry counts from the same first failure"

    async def test_a_reader_that_lost_its_entry_adds_no_retry_and_no_dead_letter(
        self, settings: Settings, connect: Connect
    ) -> None:
        transport = connect()
        keys = PartitionKeys(settings.namespace, TOPIC, 0)
        stream = keys.lane(Priority.NORMAL)
        await transport.create_group(stream, AGENT)
        await transport.add([(stream, encode(Envelope(new_id()), b"{}"))])
        [entry] = await transport.read(AGENT, "a", [(stream, 10)])
        await transport.ack(stream, AGENT, [entry.id])  # its new owner finished it meanwhile
        member = pack_delayed(entry.fields or {})
        await transport.retry_later(stream, AGENT, entry.id, keys.delayed(AGENT), member, 0)
        await transport.dead_letter(stream, AGENT, entry.id, keys.dead, {b"x": b"1"})
        assert await transport.promote(keys.delayed(AGENT), keys.retry(AGENT), 10) == (0, None)
        assert await stream_entries(transport, keys.dead) == []

    async def test_far_off_members_of_a_delay_set_can_be_listed_and_moved_out(
        self, settings: Settings, connect: Connect
    ) -> None:
        transport = connect()
        delayed = PartitionKeys(settings.namespace, TOPIC, 0).delayed(AGENT)
        soon, later = now_ms() + 60_000, now_ms() + 7_200_000
        await transport.schedule([(delayed, b"e1\x00d", soon), (delayed, b"e2\x00d", later)])
        [(member, due)] = await transport.due_after(delayed, now_ms() + 3_600_000, 10)
        assert member == b"e2\x00d"
        assert abs(due - later) < 50
        await transport.unschedule(delayed, [member])
        assert await transport.due_after(delayed, 0, 10) != []
        assert [m for m, _ in await transport.due_after(delayed, 0, 10)] == [b"e1\x00d"]

    async def test_a_delay_set_member_not_written_by_tidings_moves_on_and_stalls_nothing(
        self, settings: Settings, connect: Connect
    ) -> None:
        transport = connect()
        keys = PartitionKeys(settings.namespace, TOPIC, 0)
        delayed, retry = keys.delayed(AGENT), keys.retry(AGENT)
        due = now_ms() - 10
        await transport.schedule([(delayed, b"garbage", due), (delayed, b"e1\x00d1", due)])

        assert await transport.promote(delayed, retry, 10) == (2, None)

        fields = sorted((f for _, f in await stream_entries(transport, retry)),
                        key=lambda f: f[b"e"])
        assert fields == [{b"e": b"e1", b"d": b"d1"}, {b"e": b"garbage", b"d": b""}]

    async def test_a_retry_signal_waits_the_delay_it_asks_for(
        self, settings: Settings, connect: Connect
    ) -> None:
        called: list[float] = []

        async def later(message: Message[Any]) -> None:
            called.append(time.monotonic())
            if message.envelope.attempt == 1:
                raise Retry(delay=0.3, reason="not yet")

        recorder = Recorder(later)
        app = build(recorder, retry=FAST)
        async with running(app, settings, transport=connect()) as harness:
            await app.get_topic(TOPIC).send(Job(n=1))
            await harness.drain()
            assert len(called) == 2
            assert called[1] - called[0] >= 0.3
            assert recorder.calls[1].headers["tidings.delay"] == "0.300"

    async def test_an_error_the_policy_never_retries_is_dead_lettered_at_once(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def bad(message: Message[Any]) -> None:
            raise ValueError("malformed address")

        recorder = Recorder(bad)
        policy = RetryPolicy(strategy="fixed", base=0.02, give_up_on=(ValueError,))
        app = build(recorder, partitions=1, retry=policy)
        async with running(app, settings, transport=connect()) as harness:
            await app.get_topic(TOPIC).send(Job(n=1))
            await harness.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"permanent"
            assert dead[b"dead.reason"] == b"ValueError: malformed address"
            assert len(recorder.calls) == 1
            assert app.agents[AGENT].stats.permanent == 1

    async def test_a_message_whose_batch_keeps_crashing_is_dead_lettered_as_poison(
        self, settings: Settings, connect: Connect
    ) -> None:
        calls: list[int] = []

        async def crash(batch: Batch[Job]) -> None:
            calls.append(len(batch))
            raise RuntimeError("the handler crashes")

        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        app.agent(jobs, name=AGENT, batch=True)(crash)
        async with running(app, tuned(settings, max_deliveries=2), transport=connect()) as h:
            msg_id = await jobs.send(Job(n=13, text="poison"))
            await h.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"poison"
            assert Envelope.from_json(dead[b"e"]).id == msg_id
            assert dead[b"dead.deliveries"] == b"3"
            assert calls == [1, 1]
            assert app.agents[AGENT].stats.poison == 1
            assert await pending(app) == 0

    async def test_a_failing_message_does_not_hold_up_the_rest_of_its_partition(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def poison(message: Message[Any]) -> None:
            if message.value.text == "poison":
                raise RuntimeError("always fails")

        recorder = Recorder(poison)
        slow = RetryPolicy(strategy="fixed", base=0.5, max_attempts=2)
        app = build(recorder, partitions=1, retry=slow)
        async with running(app, settings, transport=connect()) as harness:
            topic = app.get_topic(TOPIC)
            await topic.send(Job(n=0, text="poison"), key="same")
            await until(lambda: len(recorder.calls) == 1)
            later = await topic.send_many([Job(n=i) for i in range(1, 6)], key=lambda _: "same")
            await until(lambda: len(recorder.handled) == 5)
            assert [m.id for m in recorder.handled] == later
            assert await dead_letters(app) == [], "the rest moved while the failure waited"
            await harness.drain()
            assert [d[b"dead.kind"] for d in await dead_letters(app)] == [b"exhausted"]

    async def test_reject_dead_letters_at_once_with_its_reason(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def refuse(message: Message[Any]) -> None:
            raise Reject("recipient unsubscribed")

        recorder = Recorder(refuse)
        app = build(recorder, partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            await app.get_topic(TOPIC).send(Job(n=1))
            await harness.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"rejected"
            assert dead[b"dead.reason"] == b"recipient unsubscribed"
            assert dead[b"dead.deliveries"] == b"1"
            assert len(recorder.calls) == 1
            assert app.agents[AGENT].stats.rejected == 1
            assert await pending(app) == 0

    async def test_a_payload_failing_the_schema_at_consume_time_is_dead_lettered_as_invalid(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorder = Recorder()
        app = build(recorder, partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            lane = app.get_topic(TOPIC).keys(0).lane(Priority.NORMAL)
            envelope = Envelope(id=new_id(), created_ms=now_ms(), enqueued_ms=now_ms())
            await app.transport.add([(lane, encode(envelope, b'{"n": "twelve"}'))])
            await harness.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"invalid"
            assert dead[b"dead.reason"].startswith(b"invalid payload: n: ")
            assert dead[b"d"] == b'{"n": "twelve"}'
            assert app.agents[AGENT].stats.invalid == 1
            assert recorder.calls == []

    async def test_an_unknown_envelope_version_is_dead_lettered(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorder = Recorder()
        app = build(recorder, partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            lane = app.get_topic(TOPIC).keys(0).lane(Priority.NORMAL)
            header = orjson.dumps({"v": 99, "id": new_id(), "future": "field"})
            await app.transport.add([(lane, {b"e": header, b"d": b'{"n": 1}'})])
            await harness.drain()
            [dead] = await dead_letters(app)
            assert dead[b"dead.kind"] == b"invalid"
            assert b"envelope version 99" in dead[b"dead.reason"]
            assert app.agents[AGENT].stats.invalid == 1
            assert recorder.calls == []

    # -- trimming ---------------------------------------------------------------------

    async def test_trimming_removes_entries_every_group_has_acked(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = build(Recorder(), partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            await app.get_topic(TOPIC).send_many([Job(n=i) for i in range(10)])
            await harness.drain()
            lane = app.get_topic(TOPIC).keys(0).lane(Priority.NORMAL)
            await reader(harness, 0).trim()
            # The newest entry is the floor itself (MINID keeps it); all before it went.
            assert await app.transport.length(lane) == 1
            assert app.agents[AGENT].stats.trimmed == 9

    async def test_trimming_keeps_entries_another_group_has_not_read(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = build(Recorder(), partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            lane = app.get_topic(TOPIC).keys(0).lane(Priority.NORMAL)
            await app.transport.create_group(lane, "audit")
            ids = await app.get_topic(TOPIC).send_many([Job(n=i) for i in range(10)])
            await harness.drain()
            assert await reader(harness, 0).trim() == 0
            assert envelope_ids(await stream_entries(app.transport, lane)) == ids

    async def test_trimming_keeps_entries_another_group_holds_pending(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = build(Recorder(), partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            lane = app.get_topic(TOPIC).keys(0).lane(Priority.NORMAL)
            await app.transport.create_group(lane, "audit")
            ids = await app.get_topic(TOPIC).send_many([Job(n=i) for i in range(10)])
            audited = await app.transport.read("audit", "auditor", [(lane, 5)])
            await app.transport.ack(lane, "audit", [e.id for e in audited[:2]])
            await harness.drain()
            await reader(harness, 0).trim()
            # Only the two entries both groups acked may go; 3-5 are pending, 6-10 unread.
            assert envelope_ids(await stream_entries(app.transport, lane)) == ids[2:]

    # -- priorities -------------------------------------------------------------------

    async def test_a_flood_of_high_priority_does_not_starve_low(
        self, settings: Settings, connect: Connect
    ) -> None:
        producer = build(Recorder(), partitions=1)
        await producer.start(settings, transport=connect())
        try:
            topic = producer.get_topic(TOPIC)
            await topic.send_many([Job(n=i) for i in range(2000)], priority=Priority.HIGH)
            await topic.send_many([Job(n=i) for i in range(50)], priority=Priority.LOW)
        finally:
            await producer.stop()
        recorder = Recorder()
        app = build(recorder, partitions=1)
        async with running(app, settings, transport=connect()) as harness:
            await harness.drain(within=30)
        order = [m.priority for m in recorder.handled]
        assert order.count(Priority.LOW) == 50
        last_low = max(i for i, p in enumerate(order) if p is Priority.LOW)
        last_high = max(i for i, p in enumerate(order) if p is Priority.HIGH)
        assert last_low < last_high, "low waited for the whole high flood"
        high, _, low = settings.lane_weights
        weight_share = low / (high + low)
        share = 50 / (last_low + 1)
        assert weight_share / 2 <= share <= weight_share * 2, (
            f"low got {share:.1%} of the reads while both lanes were busy,"
            f" its weight share is {weight_share:.1%}"
        )

    # -- producing --------------------------------------------------------------------

    async def test_send_many_publishes_nothing_when_one_value_is_invalid(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = build(Recorder())
        async with running(app, settings, transport=connect()):
            values = [{"n": 0}, {"n": 1}, {"n": 2}, {"n": "three"}, {"n": 4}]
            with pytest.raises(PayloadError, match=r"^message 3: .*\bn: "):
                await app.get_topic(TOPIC).send_many(values)
            assert await published(app) == 0

    async def test_an_oversized_payload_is_refused(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = build(Recorder())
        small = tuned(settings, max_payload_bytes=1024)
        async with running(app, small, transport=connect()):
            with pytest.raises(PayloadError, match="exceeds the limit of 1024 bytes"):
                await app.get_topic(TOPIC).send(Job(n=1, text="x" * 2000))
            assert await published(app) == 0

    # -- several consumers ------------------------------------------------------------

    async def test_two_consumers_split_the_partitions_between_them(
        self, settings: Settings, connect: Connect
    ) -> None:
        one, two = build(Recorder()), build(Recorder())
        async with (
            running(one, settings, transport=connect(), consumer="consumer-one") as first,
            running(two, settings, transport=connect(), consumer="consumer-two") as second,
        ):
            owners = first.owners[0], second.owners[0]
            await until(lambda: all(len(o.owned) == 2 for o in owners))
            assert sorted(owners[0].owned + owners[1].owned) == [0, 1, 2, 3]

    async def test_two_consumers_together_handle_every_message_once(
        self, settings: Settings, connect: Connect
    ) -> None:
        recorders = Recorder(), Recorder()
        one, two = build(recorders[0]), build(recorders[1])
        async with (
            running(one, settings, transport=connect(), consumer="consumer-one") as first,
            running(two, settings, transport=connect(), consumer="consumer-two") as second,
        ):
            owners = first.owners[0], second.owners[0]
            await until(lambda: all(len(o.owned) == 2 for o in owners))
            ids = await one.get_topic(TOPIC).send_many(
                [Job(n=i) for i in range(200)], key=lambda job: f"customer-{job.n % 23}"
            )
            await first.drain()
        handled = [m.id for r in recorders for m in r.handled]
        assert sorted(handled) == sorted(ids)
        assert all(r.handled for r in recorders), "one consumer did all the work"

    # -- batch agents ------------------------------------------------------------------

    async def test_a_batch_agent_acks_what_it_does_not_reject_or_fail(
        self, settings: Settings, connect: Connect
    ) -> None:
        seen: list[int] = []

        async def judge(batch: Batch[Job]) -> None:
            for message in batch:
                seen.append(message.value.n)
                if message.value.n == 3:
                    batch.reject(message, "three is not allowed")

        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        app.agent(jobs, name=AGENT, batch=True)(judge)
        async with running(app, settings, transport=connect()) as harness:
            await jobs.send_many([Job(n=i) for i in range(10)])
            await harness.drain()
            assert sorted(seen) == list(range(10))
            assert await pending(app) == 0
            dead = await dead_letters(app)
        assert [d[b"dead.reason"] for d in dead] == [b"three is not allowed"]
        assert app.agents[AGENT].stats.processed == 9

    async def test_a_batch_agent_retrying_one_message_parks_only_that_one(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def fail_odd(batch: Batch[Job]) -> None:
            for message in batch:
                if message.value.n % 2:
                    batch.retry(message, "odd", delay=30)

        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        app.agent(jobs, name=AGENT, batch=True)(fail_odd)
        async with running(app, tuned(settings, claim_idle_ms=5000), transport=connect()):
            await jobs.send_many([Job(n=i) for i in range(6)])
            await until(lambda: app.agents[AGENT].stats.processed == 3)
            await until(lambda: app.agents[AGENT].stats.retried == 3)
            assert await pending(app) == 0
            assert await delayed(app) == 3

    async def test_a_batch_agents_outputs_are_published_and_its_inputs_acked(
        self, settings: Settings, connect: Connect
    ) -> None:
        forwarded: list[int] = []

        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=2)
        doubled = app.topic("suite.doubled", model=Job, partitions=2)

        @app.agent(jobs, name=AGENT, batch=True)
        async def double(batch: Batch[Job]) -> None:
            for message in batch:
                batch.send(doubled, Job(n=message.value.n * 2), key=message.key)

        @app.agent(doubled, name="suite.collect")
        async def collect(message: Message[Job]) -> None:
            forwarded.append(message.value.n)

        async with running(app, settings, transport=connect()) as harness:
            await jobs.send_many([Job(n=i) for i in range(25)], key=lambda j: f"k{j.n % 3}")
            await until(lambda: len(forwarded) == 25)
            await harness.drain()
            assert await pending(app) == 0
        assert sorted(forwarded) == [n * 2 for n in range(25)]
        assert (jobs.published, doubled.published) == (25, 25)

    async def test_a_batch_agent_that_raises_leaves_the_whole_batch_pending(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        out = app.topic("suite.out", model=Job, partitions=1)

        @app.agent(jobs, name=AGENT, batch=True)
        async def broken(batch: Batch[Job]) -> None:
            for message in batch:
                batch.send(out, message.value)
            raise RuntimeError("database is down")

        async with running(app, tuned(settings, claim_idle_ms=5000), transport=connect()):
            await jobs.send_many([Job(n=i) for i in range(4)])
            await until(lambda: app.agents[AGENT].stats.failed == 4)
            assert await pending(app) == 4
            assert await app.transport.length(out.keys(0).lane(Priority.NORMAL)) == 0

    @pytest.mark.parametrize("second_defers", [True, False], ids=["both defer", "first only"])
    async def test_a_deferred_batch_is_published_and_acked_after_its_work_while_the_next_runs(
        self, settings: Settings, connect: Connect, second_defers: bool
    ) -> None:
        second_sent, release = asyncio.Event(), asyncio.Event()
        handled: list[int] = []
        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        out = app.topic("suite.out", model=Job, partitions=1)

        async def write_ledger() -> None:
            await release.wait()

        @app.agent(jobs, name=AGENT, batch=True)
        async def forward(batch: Batch[Job]) -> None:
            for message in batch:
                handled.append(message.value.n)
                batch.send(out, message.value)
            if handled == [1]:  # the next batch is there by the time this one is deferred
                await second_sent.wait()
            if handled == [1] or second_defers:
                batch.defer(write_ledger)

        async with running(app, tuned(settings, claim_idle_ms=5000),
                           transport=connect()) as harness:
            lane = out.keys(0).lane(Priority.NORMAL)
            await jobs.send(Job(n=1))
            await until(lambda: handled == [1])
            await jobs.send(Job(n=2))
            second_sent.set()
            await until(lambda: handled == [1, 2])  # read and run while the first one waits
            await asyncio.sleep(0.1)
            assert await pending(app) == 2
            assert await app.transport.length(lane) == 0, "published before the first was done"
            release.set()
            await harness.drain()
            assert await pending(app) == 0
            entries = await stream_entries(app.transport, lane)
        assert [Job.model_validate_json(f[PAYLOAD_FIELD]).n for _, f in entries] == [1, 2]
        assert app.agents[AGENT].stats.processed == 2

    async def test_stopping_finishes_and_acks_the_deferred_batch(
        self, settings: Settings, connect: Connect
    ) -> None:
        handled: list[int] = []
        go_on = asyncio.Event()
        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)

        async def write_ledger() -> None:
            await asyncio.sleep(0.2)

        @app.agent(jobs, name=AGENT, batch=True)
        async def record(batch: Batch[Job]) -> None:
            handled.extend(message.value.n for message in batch)
            await go_on.wait()  # told to stop meanwhile: the reader leaves with it deferred
            batch.defer(write_ledger)

        async with running(app, tuned(settings, claim_idle_ms=5000),
                           transport=connect()) as harness:
            await jobs.send(Job(n=1))
            await until(lambda: handled == [1])
            consumer = reader(harness, 0)
            stopping = asyncio.create_task(harness.owners[0].stop())
            await until(lambda: consumer.stopping)
            go_on.set()
            await stopping
            assert app.agents[AGENT].stats.processed == 1
            assert await pending(app) == 0

    async def test_a_deferred_batch_whose_work_fails_stays_pending_unpublished(
        self, settings: Settings, connect: Connect
    ) -> None:
        app = App("suite")
        jobs = app.topic(TOPIC, model=Job, partitions=1)
        out = app.topic("suite.out", model=Job, partitions=1)

        async def write_ledger() -> None:
            raise ConnectionError("database is down")

        @app.agent(jobs, name=AGENT, batch=True)
        async def forward(batch: Batch[Job]) -> None:
            for message in batch:
                batch.send(out, message.value)
            batch.defer(write_ledger)

        async with running(app, tuned(settings, claim_idle_ms=5000), transport=connect()):
            await jobs.send_many([Job(n=i) for i in range(3)])
            await until(lambda: app.agents[AGENT].stats.failed == 3)
            assert await pending(app) == 3
            assert await app.transport.length(out.keys(0).lane(Priority.NORMAL)) == 0
        assert app.agents[AGENT].stats.processed == 0

    # -- recovery (regressions found in review) ----------------------------------------

    async def test_a_batch_slower_than_the_claim_idle_time_is_not_run_twice(
        self, settings: Settings, connect: Connect
    ) -> None:
        async def slow(message: Message[Any]) -> None:
            await asyncio.sleep(0.04)

        recorder = Recorder(slow)
        app = build(recorder, partitions=1)
        quick_claims = tuned(settings, claim_idle_ms=200, batch_size=10)
        async with running(app, quick_claims, transport=connect()) as harness:
            await app.get_topic(TOPIC).send_many([Job(n=i) for i in range(10)])
            await harness.drain(within=10)
        calls = [m.value.n for m in recorder.calls]
        assert sorted(calls) == list(range(10)), "a finished message was handled again"

    async def test_a_partition_is_not_taken_over_while_its_reader_finishes_a_slow_batch(
        self, settings: Settings, connect: Connect
    ) -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def hold(message: Message[Any]) -> None:
            started.set()
            await release.wait()

        app = build(Recorder(hold), partitions=1)
        short_leases = tuned(settings, lease_ttl_ms=300, shutdown_timeout_s=10)
        async with running(app, short_leases, transport=connect(), consumer="a") as first:
            await app.get_topic(TOPIC).send(Job(n=1))
            await asyncio.wait_for(started.wait(), 5)
            stopping = asyncio.create_task(first.owners[0].stop())
            await asyncio.sleep(1.0)  # three lease lifetimes: only renewals keep it ours
            lease = app.get_topic(TOPIC).keys(0).lease(AGENT)
            assert not await app.transport.acquire_lease(lease, "b", 300)
            release.set()
            await stopping
            assert first.owners[0].leaving == {}
            assert first.owners[0].running == {}
