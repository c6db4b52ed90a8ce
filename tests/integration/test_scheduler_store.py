"""Schedules against real PostgreSQL and Redis: upserts, ticks, the relay, misfires, changes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipelines.sched_support import app, duplicates, published, store
from tidings import App
from tidings.keys import PartitionKeys
from tidings.scheduling import InvalidSchedule, Relay, Schedule, Scheduler, Schedules, Timing
from tidings.scheduling.schedule import UnknownSchedule
from tidings.scheduling.store import replace
from tidings.scheduling.tick import message_id
from tidings.tables import outbox, schedule_fires

__all__ = ["app", "store"]  # fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TOPIC = "reminders"


def cron(name: str, expression: str = "*/5 * * * *", **fields: object) -> Schedule:
    timing = Timing.parse("cron", expression, "Europe/London")
    return Schedule(name=name, timing=timing, topic=TOPIC, payload={"n": name}, **fields)  # type: ignore[arg-type]


def every(name: str, period: str, start: datetime, **fields: object) -> Schedule:
    timing = Timing.parse("every", period, "UTC", start=start)
    return Schedule(name=name, timing=timing, topic=TOPIC, payload={"n": name}, **fields)  # type: ignore[arg-type]


async def _count(engine: AsyncEngine, table: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


# -- storing ---------------------------------------------------------------------------------


async def test_adding_the_same_definition_twice_changes_nothing(store: Schedules) -> None:
    first = await store.add(cron("daily"))
    again = await store.add(cron("daily"))

    assert again == first
    assert first.state == "active"
    assert first.next_fire_at is not None
    assert first.next_fire_at > datetime.now(UTC) - timedelta(1)


async def test_adding_a_new_timing_under_the_same_name_retimes_it(store: Schedules) -> None:
    first = await store.add(cron("report", "0 9 * * *"))
    changed = await store.add(cron("report", "0 17 * * *"))

    assert changed.id == first.id
    assert changed.next_fire_at is not None
    assert changed.next_fire_at.astimezone(changed.schedule.timing.zone).hour == 17


async def test_unknown_names_are_reported_by_name(store: Schedules) -> None:
    with pytest.raises(UnknownSchedule, match="no schedule named 'ghost'"):
        await store.get("ghost")
    with pytest.raises(UnknownSchedule, match="no schedule named 'ghost'"):
        await store.pause("ghost")


async def test_a_schedule_that_can_never_fire_is_done_at_once(store: Schedules) -> None:
    timing = Timing.parse("at", "2001-01-01T00:00", "UTC", end=datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidSchedule, match="ends before it starts"):
        Timing.parse("cron", "* * * * *", "UTC", start=datetime(2001, 1, 1, tzinfo=UTC),
                     end=datetime(2000, 1, 1, tzinfo=UTC))
    status = await store.add(Schedule("past", timing, TOPIC, {}))
    assert status.state == "done"
    assert status.next_fire_at is None


# -- ticking and relaying --------------------------------------------------------------------


async def test_a_due_tick_fires_once_and_is_published_with_a_deterministic_id(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    status = await store.add(cron("every-5-min", key="user-1"))
    due = status.next_fire_at
    assert due is not None
    scheduler = Scheduler(app, engine, name="s1")

    first = await scheduler.step(as_of=due + timedelta(seconds=2))
    again = await scheduler.step(as_of=due + timedelta(seconds=2))

    assert (first.fired, again.fired) == (1, 0)
    assert first.lateness_ms == [2000.0]
    messages = await published(redis, namespace, TOPIC)
    assert len(messages) == 1
    envelope = messages[0]["envelope"]
    assert envelope["id"] == message_id(status.id, due)
    assert envelope["k"] == "user-1"
    assert envelope["h"]["schedule"] == "every-5-min"
    assert messages[0]["payload"] == {"n": "every-5-min"}
    assert await _count(engine, outbox) == 0
    [fire] = await store.fires("every-5-min")
    assert (fire.tick, fire.lateness_ms, fire.scheduler) == (due, 2000.0, "s1")
    after = await store.get("every-5-min")
    assert after.runs == 1
    assert after.next_fire_at == due + timedelta(minutes=5)


async def test_a_relay_that_dies_after_publishing_does_not_publish_twice(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    status = await store.add(cron("crashy"))
    assert status.next_fire_at is not None

    async def die(phase: str) -> None:
        if phase == "relay":
            raise RuntimeError("killed between XADD and DELETE")

    doomed = Scheduler(app, engine, name="doomed", checkpoint=die)
    with pytest.raises(RuntimeError, match="killed"):
        await doomed.step(as_of=status.next_fire_at)
    assert await _count(engine, outbox) == 1  # the DELETE rolled back with the transaction

    survivor = Scheduler(app, engine, name="survivor")
    await survivor.step(as_of=status.next_fire_at)

    assert survivor.relay.duplicates == 1
    assert await _count(engine, outbox) == 0
    assert len(await published(redis, namespace, TOPIC)) == 1
    [marker] = [k async for k in redis.scan_iter(match=f"{namespace}:*:sent:*")]
    assert 0 < await redis.pttl(marker) <= 24 * 3600 * 1000  # markers expire on their own


async def test_concurrent_schedulers_fire_each_due_tick_once(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    for n in range(60):
        await store.add(every(f"s{n}", "10s", start, misfire="fire_all"))
    schedulers = [Scheduler(app, engine, name=f"s{i}", batch=7) for i in range(3)]
    as_of = start + timedelta(seconds=25)  # three ticks each: start, +10s, +20s

    for _ in range(10):
        await asyncio.gather(*(s.step(as_of=as_of) for s in schedulers))

    assert sum(s.fired for s in schedulers) == 180
    assert await _count(engine, schedule_fires) == 180
    ids = [m["envelope"]["id"] for m in await published(redis, namespace, TOPIC)]
    assert len(ids) == 180
    assert not duplicates(ids)


# -- changes take effect on the next tick ------------------------------------------------------


async def test_an_update_applies_from_the_next_tick(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    status = await store.add(cron("digest"))
    due = status.next_fire_at
    assert due is not None
    scheduler = Scheduler(app, engine)
    await scheduler.step(as_of=due)

    await store.update(replace(status.schedule, payload={"n": "changed"}))
    await scheduler.step(as_of=due + timedelta(minutes=5))

    payloads = [m["payload"] for m in await published(redis, namespace, TOPIC)]
    assert sorted(payloads, key=str) == [{"n": "changed"}, {"n": "digest"}]


async def test_cancel_stops_the_next_tick(
    app: App, engine: AsyncEngine, store: Schedules
) -> None:
    status = await store.add(cron("doomed"))
    due = status.next_fire_at
    assert due is not None
    scheduler = Scheduler(app, engine)
    await scheduler.step(as_of=due)

    cancelled = await store.cancel("doomed")
    later = await scheduler.step(as_of=due + timedelta(hours=1))

    assert cancelled.state == "cancelled"
    assert cancelled.next_fire_at is None
    assert later.fired == 0
    with pytest.raises(UnknownSchedule, match="cancelled"):
        await store.update(status.schedule)


async def test_pause_skips_ticks_and_resume_continues_from_now(store: Schedules) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    await store.add(every("heartbeat", "1h", start))
    paused = await store.pause("heartbeat")
    resumed = await store.resume("heartbeat")

    assert paused.state == "paused"
    assert resumed.state == "active"
    assert resumed.next_fire_at == start + timedelta(hours=2)


# -- misfires ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("misfire", "fired", "next_in"),
    [("fire_all", 6, 1), ("fire_once", 1, 1), ("skip", 0, 1)],
)
async def test_misfire_policy_after_downtime(
    app: App, engine: AsyncEngine, store: Schedules, misfire: str, fired: int, next_in: int
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    await store.add(every("m", "1m", start, misfire=misfire))
    down_until = start + timedelta(minutes=5, seconds=30)  # ticks at 0..5 minutes were missed

    result = await Scheduler(app, engine).step(as_of=down_until)

    assert result.fired == fired
    status = await store.get("m")
    assert status.next_fire_at == start + timedelta(minutes=5 + next_in)


async def test_max_runs_ends_the_schedule(app: App, engine: AsyncEngine, store: Schedules) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    await store.add(every("thrice", "1m", start, max_runs=3, misfire="fire_all"))

    result = await Scheduler(app, engine).step(as_of=start + timedelta(minutes=10))

    status = await store.get("thrice")
    assert result.fired == 3
    assert (status.state, status.runs, status.next_fire_at) == ("done", 3, None)


# -- delayed delivery ------------------------------------------------------------------------


async def test_schedule_once_holds_a_message_until_its_time_and_fires_it_once(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    first = await store.schedule_once(TOPIC, {"to": "ada"}, at, key="ada", name="n-1:send_at")
    again = await store.schedule_once(TOPIC, {"to": "ada"}, at, key="ada", name="n-1:send_at")
    scheduler = Scheduler(app, engine)

    early = await scheduler.step(as_of=at - timedelta(seconds=1))
    on_time = await scheduler.step(as_of=at)
    retried = await store.schedule_once(TOPIC, {"to": "ada"}, at, key="ada", name="n-1:send_at")

    assert again == first
    assert (early.fired, on_time.fired) == (0, 1)
    assert retried.state == "done"
    assert [m["payload"] for m in await published(redis, namespace, TOPIC)] == [{"to": "ada"}]


# -- housekeeping and scale ------------------------------------------------------------------


async def test_purge_removes_finished_schedules_and_old_fires_only(
    app: App, engine: AsyncEngine, store: Schedules
) -> None:
    at = datetime.now(UTC) - timedelta(seconds=1)
    await store.schedule_once(TOPIC, {}, at, name="fired")
    await store.add(cron("kept"))
    await Scheduler(app, engine).step()

    assert await store.purge(timedelta(hours=1)) == (0, 0)
    assert await store.purge(timedelta(0)) == (1, 1)
    assert [s.name for s in await store.all()] == ["kept"]


async def test_a_finished_schedule_is_aged_from_its_last_fire_not_its_creation(
    app: App, engine: AsyncEngine, store: Schedules
) -> None:
    await store.schedule_once(TOPIC, {}, datetime.now(UTC) - timedelta(seconds=1), name="once")
    async with engine.begin() as conn:  # made long ago, fired just now
        await conn.execute(text("UPDATE schedules SET created_at = now() - interval '2 days',"
                                " updated_at = now() - interval '2 days'"))
    await Scheduler(app, engine).step()

    assert await store.purge(timedelta(hours=1)) == (0, 0)
    assert (await store.get("once")).state == "done"


async def test_runs_count_the_fires_written_not_the_ticks_planned(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    done = await store.schedule_once(TOPIC, {"v": 1}, datetime.now(UTC) - timedelta(seconds=1),
                                     name="once")
    await Scheduler(app, engine).step()
    await store.update(replace(done.schedule, payload={"v": 2}))  # the same tick, due again
    await Scheduler(app, engine).step()

    assert (await store.get("once")).runs == 1
    assert len(await store.fires("once")) == 1
    assert len(await published(redis, namespace, TOPIC)) == 1


async def test_the_tick_reads_due_rows_through_the_partial_index(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("""
            INSERT INTO schedules (name, kind, expression, topic, payload, next_fire_at)
            SELECT 'n' || g, 'every', '1h', 't', '{}', now() + make_interval(mins => g)
            FROM generate_series(1, 20000) AS g
        """))
        await conn.execute(text("ANALYZE schedules"))
        plan = (await conn.execute(text(
            "EXPLAIN SELECT id FROM schedules WHERE state = 'active' AND next_fire_at <= now()"
            " ORDER BY next_fire_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
        ))).scalars().all()
    assert "ix_schedules_next_fire_at_active" in "\n".join(plan)


async def test_relays_sharing_an_app_declare_a_new_topic_once(
    app: App, engine: AsyncEngine
) -> None:
    relays = [Relay(app, engine) for _ in range(3)]
    topics = await asyncio.gather(*(r._topic("fresh") for r in relays))
    assert {id(t) for t in topics} == {id(app.topics["fresh"])}


async def test_a_schedule_that_cannot_be_computed_is_paused_without_blocking_others(
    app: App, engine: AsyncEngine, store: Schedules
) -> None:
    broken = await store.add(cron("broken"))
    healthy = await store.add(cron("healthy"))
    async with engine.begin() as conn:  # as if the zone had left the tz database
        await conn.execute(
            text("UPDATE schedules SET timezone = 'Gone/Away' WHERE name = 'broken'")
        )
    assert healthy.next_fire_at == broken.next_fire_at is not None

    result = await Scheduler(app, engine).step(as_of=healthy.next_fire_at)

    assert result.fired == 1
    assert len(await store.fires("healthy")) == 1
    assert (await store.get("healthy")).state == "active"
    async with engine.connect() as conn:
        state = (await conn.execute(text("SELECT state FROM schedules WHERE name = 'broken'")))
        assert state.scalar_one() == "paused"


async def test_an_empty_key_keeps_its_partition_as_a_live_send_does(
    app: App, engine: AsyncEngine, store: Schedules, redis: Redis, namespace: str
) -> None:
    due = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(6):
        await store.schedule_once(TOPIC, {"n": n}, due, name=f"empty-{n}", key="")
    await Scheduler(app, engine).step()

    partitions = int(await redis.hget(f"{namespace}:topics", TOPIC) or 0)
    expected = app.get_topic(TOPIC).partition_for("")
    per_partition = {p: sum([await redis.xlen(lane) for lane in
                             PartitionKeys(namespace, TOPIC, p).lanes])
                     for p in range(partitions)}
    assert per_partition[expected] == 6, per_partition
