"""What one tick does with a due schedule: misfire policies, run limits, deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidings.errors import PayloadError
from tidings.scheduling import InvalidSchedule, Schedule, Timing
from tidings.scheduling.tick import message_id, plan
from tidings.testing import MemoryTransport

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
MINUTELY = Timing.parse("every", "1m", "UTC", start=T0)
GRACE = timedelta(seconds=30)


def minutes(*ns: int) -> list[datetime]:
    return [T0 + timedelta(minutes=n) for n in ns]


def test_an_on_time_tick_fires_and_the_next_one_is_scheduled() -> None:
    for policy in ("fire_once", "fire_all", "skip"):
        p = plan(MINUTELY, T0, T0 + timedelta(seconds=2), misfire=policy, grace=GRACE)
        assert (p.ticks, p.next_fire_at, p.state) == ([T0], T0 + timedelta(minutes=1), "active")


def test_fire_all_fires_every_missed_tick() -> None:
    p = plan(MINUTELY, T0, T0 + timedelta(minutes=3, seconds=10), misfire="fire_all", grace=GRACE)
    assert p.ticks == minutes(0, 1, 2, 3)
    assert p.next_fire_at == T0 + timedelta(minutes=4)


def test_fire_all_catches_up_in_bounded_steps() -> None:
    p = plan(MINUTELY, T0, T0 + timedelta(hours=5), misfire="fire_all", grace=GRACE, limit=100)
    assert len(p.ticks) == 100
    assert p.next_fire_at == T0 + timedelta(minutes=100)  # still due: the next tick goes on


def test_fire_once_fires_the_first_missed_tick_and_resumes_after_now() -> None:
    p = plan(MINUTELY, T0, T0 + timedelta(minutes=3, seconds=10), misfire="fire_once", grace=GRACE)
    assert p.ticks == [T0]
    assert p.next_fire_at == T0 + timedelta(minutes=4)


def test_skip_fires_nothing_later_than_the_grace() -> None:
    p = plan(MINUTELY, T0, T0 + timedelta(minutes=3, seconds=10), misfire="skip", grace=GRACE)
    assert (p.ticks, p.skipped, p.next_fire_at) == ([], 1, T0 + timedelta(minutes=4))


def test_runs_left_caps_the_fires_and_ends_the_schedule() -> None:
    p = plan(MINUTELY, T0, T0 + timedelta(minutes=9), misfire="fire_all", grace=GRACE,
             runs_left=2)
    assert (p.ticks, p.next_fire_at, p.state) == (minutes(0, 1), None, "done")


def test_a_one_shot_is_done_after_its_tick() -> None:
    once = Timing.parse("at", T0.isoformat(), "UTC")
    p = plan(once, T0, T0 + timedelta(hours=2), misfire="fire_once", grace=GRACE)
    assert (p.ticks, p.state) == ([T0], "done")


def test_an_interval_without_a_start_keeps_its_grid_after_downtime() -> None:
    anchorless = Timing.parse("every", "10m", "UTC")
    p = plan(anchorless, T0, T0 + timedelta(minutes=35), misfire="fire_once", grace=GRACE)
    assert p.next_fire_at == T0 + timedelta(minutes=40)


def test_message_ids_are_deterministic_distinct_and_time_ordered() -> None:
    assert message_id(7, T0) == message_id(7, T0)
    assert message_id(7, T0) != message_id(8, T0)
    assert message_id(7, T0) < message_id(7, T0 + timedelta(milliseconds=1))
    assert len(message_id(7, T0)) == 32


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"topic": "a:b"}, InvalidSchedule, "may not be empty or contain braces"),
        ({"name": " padded"}, InvalidSchedule, "non-empty, unpadded"),
        ({"name": "n" * 201}, InvalidSchedule, "is 201 characters; use at most 200"),
        ({"misfire": "later"}, InvalidSchedule, "misfire policy 'later'"),
        ({"priority": "urgent"}, InvalidSchedule, "priority 'urgent'"),
        ({"max_runs": 0}, InvalidSchedule, "max_runs must be 1 to 2,147,483,647"),
        ({"max_runs": 3_000_000_000}, InvalidSchedule, "max_runs must be 1 to"),
        ({"payload": {"text": "a\x00b"}}, InvalidSchedule, "NUL character"),
        ({"payload": {1, 2}}, PayloadError, "not JSON-serialisable"),
    ],
)
def test_a_schedule_is_validated_when_it_is_made(
    fields: dict[str, object], error: type[Exception], message: str
) -> None:
    base: dict[str, object] = {"name": "n", "timing": MINUTELY, "topic": "t", "payload": {}}
    with pytest.raises(error, match=message):
        Schedule(**{**base, **fields})  # type: ignore[arg-type]


async def test_the_memory_transport_adds_a_marked_entry_once() -> None:
    transport = MemoryTransport()
    entry = ("m:{t:x:0}:sent:1", "m:{t:x:0}:normal", {b"e": b"{}", b"d": b"1"})

    first = await transport.add_once([entry], ttl_ms=60_000)
    again = await transport.add_once([entry], ttl_ms=60_000)

    assert first[0] is not None
    assert again == [None]
    assert await transport.length("m:{t:x:0}:normal") == 1
