"""Real `tidings worker` processes on real Redis and PostgreSQL: crashes, signals, heartbeats.

Each class runs one scenario once (a class-scoped fixture) and its tests check one outcome
each. Workers run `tests.pipelines.counting:app`, which records "N:PID" per handled job.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest
from redis import Redis
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError

from processes import (
    HOST,
    PARTITIONS,
    SHUTDOWN_TIMEOUT_S,
    Servers,
    WorkerProcess,
    drop_schema,
    wait_until,
)
from tidings import App, Settings
from tidings.database import create_engine
from tidings.keys import PartitionKeys
from tidings.tables.consumers import consumer_groups, consumer_instances

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

APP_PATH = "tests.pipelines.counting:app"
TOPIC = "counting.jobs"
AGENT = "counting.record"


# -- Redis and PostgreSQL as the tests see them ---------------------------------------------


def lanes(namespace: str) -> list[str]:
    return [lane for p in range(PARTITIONS) for lane in PartitionKeys(namespace, TOPIC, p).lanes]


def processed(redis: Redis, namespace: str) -> list[tuple[int, int]]:
    """(job number, pid of the worker that handled it) for every handling, in order."""
    raw: list[bytes] = redis.lrange(f"{namespace}:counting:processed", 0, -1)  # type: ignore[assignment]
    return [(int(n), int(pid)) for n, pid in (item.decode().split(":") for item in raw)]


def pending(redis: Redis, namespace: str) -> int:
    total = 0
    for lane in lanes(namespace):
        if redis.exists(lane):
            groups = redis.xinfo_groups(lane)
            total += sum(g["pending"] for g in groups if g["name"] == AGENT.encode())
    return total


def pending_jobs(redis: Redis, namespace: str, consumer: str) -> set[int]:
    """The job numbers left pending for one consumer."""
    jobs = set()
    for lane in lanes(namespace):
        if not redis.exists(lane):
            continue
        for row in redis.xpending_range(lane, AGENT, "-", "+", 10_000, consumername=consumer):
            [(_, fields)] = redis.xrange(lane, row["message_id"], row["message_id"])
            jobs.add(orjson.loads(fields[b"d"])["n"])
    return jobs


async def _publish(servers: Servers, count: int) -> None:
    app = App("producer")
    topic = app.topic(TOPIC, partitions=PARTITIONS)
    settings = Settings(
        redis_url=servers.redis_url, namespace=servers.namespace, home=servers.home
    )
    await app.start(settings)
    try:
        await topic.send_many([{"n": n} for n in range(count)], key=lambda v: f"k{v['n'] % 10}")
    finally:
        await app.stop()


def publish(servers: Servers, count: int) -> None:
    asyncio.run(_publish(servers, count))


async def _instances(servers: Servers) -> list[dict[str, Any]]:
    engine = create_engine(
        servers.database_url, schema=servers.schema, pool_size=1, connect_timeout=5
    )
    rows, groups = consumer_instances.c, consumer_groups.c
    query = select(
        rows.id, rows.hostname, rows.pid, rows.state, rows.last_heartbeat_at, rows.stopped_at,
        groups.topic, groups.name.label("group"),
    ).join_from(consumer_instances, consumer_groups)
    try:
        async with engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]
    except ProgrammingError:  # the worker has not migrated the schema yet
        return []
    finally:
        await engine.dispose()


def instances(servers: Servers) -> list[dict[str, Any]]:
    return asyncio.run(_instances(servers))


@pytest.fixture(scope="class")
def servers(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    suffix = uuid.uuid4().hex[:10]
    found = Servers(
        redis_url, database_url, f"tt-{suffix}", f"tt_{suffix}",
        tmp_path_factory.mktemp("worker-home"),
    )
    yield found
    with Redis.from_url(redis_url) as redis:
        doomed = list(redis.scan_iter(match=f"{found.namespace}*", count=1000))
        if doomed:
            redis.delete(*doomed)
    asyncio.run(drop_schema(found))


@pytest.fixture(scope="class")
def redis(redis_url: str) -> Iterator[Redis]:
    with Redis.from_url(redis_url) as client:
        yield client


# -- a worker killed with SIGKILL -------------------------------------------------------------


@dataclass
class Crash:
    jobs: int
    victim_pid: int
    rescuer_pid: int
    left_by_victim: set[int]
    handled: list[tuple[int, int]]
    pending_after: int


class TestAWorkerKilledMidBatch:
    JOBS = 200

    @pytest.fixture(scope="class")
    @classmethod
    def crash(cls, servers: Servers, redis: Redis) -> Crash:
        ns = servers.namespace
        publish(servers, cls.JOBS)
        victim = WorkerProcess(servers, APP_PATH, "victim", COUNTING_DELAY_S="0.02")
        rescuer: WorkerProcess | None = None
        try:
            wait_until(lambda: len(processed(redis, ns)) >= 20, 60, victim)
            victim.stop(signal.SIGKILL)
            victim.wait(10)
            left = pending_jobs(redis, ns, victim.consumer)
            rescuer = WorkerProcess(servers, APP_PATH, "rescuer")
            wait_until(
                lambda: {n for n, _ in processed(redis, ns)} == set(range(cls.JOBS))
                and pending(redis, ns) == 0,
                60, rescuer,
            )
            rescuer.stop()
            assert rescuer.wait(SHUTDOWN_TIMEOUT_S + 10) == 0, rescuer.log()
            return Crash(cls.JOBS, victim.pid, rescuer.pid, left, processed(redis, ns),
                         pending(redis, ns))
        finally:
            victim.close()
            if rescuer is not None:
                rescuer.close()

    def test_the_killed_worker_had_messages_in_hand(self, crash: Crash) -> None:
        assert crash.left_by_victim

    def test_another_worker_handles_what_the_killed_one_had_in_hand(self, crash: Crash) -> None:
        by_rescuer = {n for n, pid in crash.handled if pid == crash.rescuer_pid}
        assert crash.left_by_victim <= by_rescuer

    def test_no_message_is_lost(self, crash: Crash) -> None:
        assert {n for n, _ in crash.handled} == set(range(crash.jobs))

    def test_nothing_is_left_pending(self, crash: Crash) -> None:
        assert crash.pending_after == 0


# -- a worker stopped with SIGTERM ------------------------------------------------------------


@dataclass
class Stop:
    jobs: int
    exit_code: int
    seconds_to_exit: float
    pending_after_stop: int
    handled_before_stop: int
    handled: list[tuple[int, int]]
    second_exit_code: int
    pending_after: int


class TestAWorkerStoppedWithSigterm:
    JOBS = 150

    @pytest.fixture(scope="class")
    @classmethod
    def stop(cls, servers: Servers, redis: Redis) -> Stop:
        ns = servers.namespace
        publish(servers, cls.JOBS)
        first = WorkerProcess(servers, APP_PATH, "first", COUNTING_DELAY_S="0.05")
        second: WorkerProcess | None = None
        try:
            wait_until(lambda: len(processed(redis, ns)) >= 5, 60, first)
            started = time.monotonic()
            first.stop(signal.SIGTERM)
            exit_code = first.wait(SHUTDOWN_TIMEOUT_S + 20)
            seconds = time.monotonic() - started
            pending_after_stop = pending(redis, ns)
            handled_before = len(processed(redis, ns))
            second = WorkerProcess(servers, APP_PATH, "second")
            wait_until(
                lambda: {n for n, _ in processed(redis, ns)} == set(range(cls.JOBS))
                and pending(redis, ns) == 0,
                60, second,
            )
            second.stop(signal.SIGTERM)
            second_exit = second.wait(SHUTDOWN_TIMEOUT_S + 20)
            return Stop(cls.JOBS, exit_code, seconds, pending_after_stop, handled_before,
                        processed(redis, ns), second_exit, pending(redis, ns))
        finally:
            first.close()
            if second is not None:
                second.close()

    def test_sigterm_exits_0(self, stop: Stop) -> None:
        assert stop.exit_code == 0

    def test_sigterm_exits_within_the_shutdown_deadline(self, stop: Stop) -> None:
        assert stop.seconds_to_exit < SHUTDOWN_TIMEOUT_S + 2

    def test_the_stopped_worker_was_part_way_through(self, stop: Stop) -> None:
        assert 5 <= stop.handled_before_stop < stop.jobs

    def test_a_graceful_stop_finishes_and_acks_the_batch_in_hand(self, stop: Stop) -> None:
        assert stop.pending_after_stop == 0

    def test_a_second_worker_handles_the_rest_and_none_is_lost(self, stop: Stop) -> None:
        assert {n for n, _ in stop.handled} == set(range(stop.jobs))
        assert stop.pending_after == 0

    def test_no_message_is_handled_twice_across_a_graceful_stop(self, stop: Stop) -> None:
        assert len(stop.handled) == stop.jobs

    def test_the_second_worker_also_exits_0(self, stop: Stop) -> None:
        assert stop.second_exit_code == 0


# -- a SIGTERM whose in-flight work outlasts the shutdown deadline ----------------------------


@dataclass
class Deadline:
    jobs: int
    deadline_s: float
    exit_code: int
    seconds_to_exit: float
    handed_back: int
    handled: list[tuple[int, int]]
    pending_after: int


class TestAWorkerWhoseWorkOutlastsTheShutdownDeadline:
    JOBS = 40
    DEADLINE_S = 1.5

    @pytest.fixture(scope="class")
    @classmethod
    def deadline(cls, servers: Servers, redis: Redis) -> Deadline:
        ns = servers.namespace
        publish(servers, cls.JOBS)
        slow = WorkerProcess(servers, APP_PATH, "slow", COUNTING_DELAY_S="1.0",
                             TIDINGS_SHUTDOWN_TIMEOUT_S=str(cls.DEADLINE_S))
        # Too patient to reclaim anything itself in this test's time: it can only finish the
        # slow worker's batch if that batch was handed back at once.
        patient = None
        try:
            wait_until(lambda: len(processed(redis, ns)) >= 1, 60, slow)
            started = time.monotonic()
            slow.stop(signal.SIGTERM)
            exit_code = slow.wait(cls.DEADLINE_S + 20)
            seconds = time.monotonic() - started
            handed_back = pending(redis, ns)
            patient = WorkerProcess(servers, APP_PATH, "patient", TIDINGS_CLAIM_IDLE_MS="600000")
            wait_until(
                lambda: {n for n, _ in processed(redis, ns)} == set(range(cls.JOBS))
                and pending(redis, ns) == 0,
                30, patient,
            )
            patient.stop(signal.SIGTERM)
            patient.wait(SHUTDOWN_TIMEOUT_S + 20)
            return Deadline(cls.JOBS, cls.DEADLINE_S, exit_code, seconds, handed_back,
                            processed(redis, ns), pending(redis, ns))
        finally:
            slow.close()
            if patient is not None:
                patient.close()

    def test_it_still_exits_0(self, deadline: Deadline) -> None:
        assert deadline.exit_code == 0

    def test_it_exits_soon_after_the_deadline(self, deadline: Deadline) -> None:
        assert deadline.seconds_to_exit < deadline.deadline_s + 2.5

    def test_it_hands_back_the_batch_it_could_not_finish(self, deadline: Deadline) -> None:
        assert deadline.handed_back > 0

    def test_another_worker_takes_the_handed_back_batch_at_once_and_none_is_lost(
        self, deadline: Deadline
    ) -> None:
        assert {n for n, _ in deadline.handled} == set(range(deadline.jobs))
        assert deadline.pending_after == 0


# -- heartbeats in PostgreSQL -----------------------------------------------------------------


@dataclass
class Heartbeats:
    pid: int
    consumer: str
    running: dict[str, Any]
    refreshed_at: datetime
    exit_code: int
    after_exit: dict[str, Any]


class TestWorkerHeartbeats:
    @pytest.fixture(scope="class")
    @classmethod
    def beats(cls, servers: Servers) -> Heartbeats:
        worker = WorkerProcess(servers, APP_PATH, "watcher", TIDINGS_HEARTBEAT_INTERVAL_S="0.2")
        try:
            mine: list[dict[str, Any]] = []

            def row_appears() -> bool:
                mine[:] = [r for r in instances(servers) if r["pid"] == worker.pid]
                return bool(mine)

            wait_until(row_appears, 60, worker)
            running = mine[0]
            wait_until(
                lambda: row_appears() and mine[0]["last_heartbeat_at"]
                > running["last_heartbeat_at"],
                10, worker,
            )
            refreshed_at = mine[0]["last_heartbeat_at"]
            worker.stop(signal.SIGTERM)
            exit_code = worker.wait(SHUTDOWN_TIMEOUT_S + 20)
            [after] = [r for r in instances(servers) if r["pid"] == worker.pid]
            return Heartbeats(worker.pid, worker.consumer, running, refreshed_at, exit_code,
                              after)
        finally:
            worker.close()

    def test_a_running_worker_has_a_row_per_consumer_instance(self, beats: Heartbeats) -> None:
        row = beats.running
        assert row["id"] == f"{AGENT}@{beats.consumer}"
        assert (row["topic"], row["group"]) == (TOPIC, AGENT)
        assert (row["hostname"], row["pid"], row["state"]) == (HOST, beats.pid, "running")

    def test_the_heartbeat_is_refreshed_while_the_worker_runs(self, beats: Heartbeats) -> None:
        assert beats.refreshed_at > beats.running["last_heartbeat_at"]

    def test_a_graceful_exit_marks_the_instance_stopped(self, beats: Heartbeats) -> None:
        assert beats.exit_code == 0
        assert beats.after_exit["state"] == "stopped"
        assert beats.after_exit["stopped_at"] is not None
