"""Replaying dead letters against real Redis and PostgreSQL: once, audited, ledger reset."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import keys
from tidings.dlq.edits import EditError, parse_edit
from tidings.dlq.recorder import DeadLetterRecorder
from tidings.dlq.replay import Replayed, Replayer, ReplayError
from tidings.dlq.store import UnknownDeadLetter
from tidings.errors import TidingsError
from tidings.keys import PartitionKeys
from tidings.message import Envelope
from tidings.tables import dead_letter_replays, dead_letters, deliveries, messages

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

HISTORY = orjson.dumps([{"attempt": 1, "at_ms": 1_000, "type": "Timeout", "message": "slow"}])


@pytest.fixture
def replayer(engine: AsyncEngine, redis: Redis, namespace: str) -> Replayer:
    return Replayer(engine, redis, namespace, by="ops-alice")


async def dead_letter(redis: Redis, engine: AsyncEngine, namespace: str, *,
                      headers: dict[str, str] | None = None, payload: bytes | None = None,
                      envelope: bytes | None = None) -> int:
    """Park one entry in the sms topic's dead stream, record it, return its dead-letter id."""
    await redis.hsetnx(keys.topic_registry(namespace), "sms", 1)
    head = Envelope("m-1", key="u-1", attempt=4, enqueued_ms=5,
                    headers={"tidings.errors": HISTORY.decode(), "tidings.delay": "2.000",
                             **(headers or {})})
    fields = {b"e": envelope if envelope is not None else head.to_json(),
              b"d": payload if payload is not None else b'{"recipient": {"user_id": "u-1"}}',
              b"dead.kind": b"exhausted", b"dead.reason": b"slow", b"dead.group": b"send-sms"}
    await redis.xadd(PartitionKeys(namespace, "sms", 0).dead, fields)  # type: ignore[arg-type]
    await DeadLetterRecorder(redis, engine, namespace, consumer="r").record_once()
    async with engine.connect() as conn:
        return int((await conn.execute(select(dead_letters.c.id)
                                       .order_by(dead_letters.c.id.desc()))).scalars().first())


async def retried(redis: Redis, namespace: str) -> list[tuple[Envelope, bytes]]:
    stream = PartitionKeys(namespace, "sms", 0).retry("send-sms")
    return [(Envelope.from_json(f[b"e"]), f[b"d"]) for _, f in await redis.xrange(stream)]


async def ledger(engine: AsyncEngine, states: dict[str, str], message_id: str = "m-1") -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(messages).values(id=message_id, topic="sms", payload={}))
        await conn.execute(insert(deliveries), [
            {"message_id": message_id, "channel": "sms", "recipient": r, "state": s}
            for r, s in states.items()
        ])


async def ledger_states(engine: AsyncEngine) -> dict[str, tuple[str, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(deliveries.c.recipient, deliveries.c.state,
                                         deliveries.c.last_error))
        return {r.recipient: (r.state, r.last_error) for r in rows}


async def test_an_edited_replay_puts_one_entry_in_the_groups_retry_stream(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    done = await replayer.replay_one(letter, [parse_edit("recipient.user_id=u-42")])

    [(envelope, payload)] = await retried(redis, namespace)
    assert orjson.loads(payload) == {"recipient": {"user_id": "u-42"}}
    assert (envelope.id, envelope.key, envelope.attempt) == ("m-1", "u-1", 1)
    assert envelope.enqueued_ms > 5
    assert envelope.headers["tidings.replay"] == str(done.audit_id)
    assert envelope.headers["tidings.errors"] == HISTORY.decode()
    assert "tidings.delay" not in envelope.headers


async def test_a_replay_is_audited_with_who_and_what_was_edited(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    done = await replayer.replay_one(letter, [parse_edit("recipient.user_id=u-42")])

    async with engine.connect() as conn:
        audit = (await conn.execute(select(dead_letter_replays))).one()
        row = (await conn.execute(select(dead_letters))).one()
    assert (audit.id, audit.dead_letter_id, audit.message_id) == (done.audit_id, letter, "m-1")
    assert (audit.replayed_by, audit.edits, audit.forced) == (
        "ops-alice", {"recipient.user_id": "u-42"}, False
    )
    assert audit.target_stream == PartitionKeys(namespace, "sms", 0).retry("send-sms")
    assert audit.new_entry_id == done.new_entry_id is not None
    assert (row.state, row.replays, row.replayed_at is not None) == ("replayed", 1, True)


async def test_a_replay_resets_only_the_dead_ledger_rows(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    await ledger(engine, {"+1": "dead", "+2": "sent"})

    done = await replayer.replay_one(letter)

    assert done.deliveries_reset == 1
    assert await ledger_states(engine) == {
        "+1": ("failed", f"replayed from dead letter {letter} by ops-alice"), "+2": ("sent", None),
    }


async def test_the_ledger_message_comes_from_the_message_header_when_present(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace, headers={"tidings.message": "n-9"})
    await ledger(engine, {"+1": "dead"}, message_id="n-9")

    assert (await replayer.replay_one(letter)).deliveries_reset == 1


async def test_a_second_replay_is_refused_without_force(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    await replayer.replay_one(letter)

    with pytest.raises(ReplayError, match=r"already replayed .*add --force"):
        await replayer.replay_one(letter)
    assert len(await retried(redis, namespace)) == 1


async def test_a_forced_replay_sends_again_and_resets_sent_rows(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    await ledger(engine, {"+1": "dead", "+2": "sent", "+3": "filtered"})
    await replayer.replay_one(letter)

    again = await replayer.replay_one(letter, force=True)

    assert again.forced
    assert again.deliveries_reset == 1
    assert {r: s for r, (s, _) in (await ledger_states(engine)).items()} == {
        "+1": "failed", "+2": "failed", "+3": "filtered",
    }
    assert len(await retried(redis, namespace)) == 2


async def test_a_replay_whose_publish_failed_is_finished_by_the_next_once(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    await ledger(engine, {"+1": "dead"})

    async def redis_away(*args: object, **kwargs: object) -> list[bytes | None]:
        raise ConnectionError("Redis is away")

    with monkeypatch.context() as patched:
        patched.setattr(replayer.transport, "add_once", redis_away)
        with pytest.raises(ReplayError, match="run the replay again to publish it"):
            await replayer.replay_one(letter, [parse_edit("recipient.user_id=u-2")])
    # Committed before the publish: the legs may go, so the entry, when it comes, is sent.
    assert (await ledger_states(engine))["+1"][0] == "failed"
    assert await retried(redis, namespace) == []

    done = await replayer.replay_one(letter)

    assert done.new_entry_id is not None
    [(envelope, payload)] = await retried(redis, namespace)
    assert orjson.loads(payload)["recipient"]["user_id"] == "u-2", "the edit of the replay owed"
    assert envelope.headers["tidings.replay"] == str(done.audit_id)
    with pytest.raises(ReplayError, match="already replayed"):
        await replayer.replay_one(letter)


async def test_a_replay_published_and_not_recorded_is_not_published_twice(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter = await dead_letter(redis, engine, namespace)
    real = replayer.transport.add_once

    async def added_then_lost(*args: Any, **kwargs: Any) -> list[bytes | None]:
        await real(*args, **kwargs)
        raise ConnectionError("the reply was lost")

    with monkeypatch.context() as patched:
        patched.setattr(replayer.transport, "add_once", added_then_lost)
        with pytest.raises(ReplayError):
            await replayer.replay_one(letter)

    done = await replayer.replay_one(letter)

    assert done.new_entry_id is None
    assert len(await retried(redis, namespace)) == 1


async def test_a_letter_without_a_readable_envelope_is_refused(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace, envelope=b"\xff garbage")
    with pytest.raises(ReplayError, match="no readable envelope"):
        await replayer.replay_one(letter)


async def test_editing_a_payload_that_is_not_json_is_refused_and_changes_nothing(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    letter = await dead_letter(redis, engine, namespace, payload=b"plain text")
    with pytest.raises(EditError, match="not JSON"):
        await replayer.replay_one(letter, [parse_edit("a=1")])

    async with engine.connect() as conn:
        state = (await conn.execute(select(dead_letters.c.state))).scalar_one()
    assert state == "dead"
    assert await retried(redis, namespace) == []


async def test_a_bulk_replay_goes_on_past_refusals_and_reports_each(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    first = await dead_letter(redis, engine, namespace)
    second = await dead_letter(redis, engine, namespace)
    await replayer.replay_one(first)
    seen: list[int] = []

    outcomes = await replayer.replay([first, 999_999, second], rate=1000.0,
                                     progress=lambda i, _: seen.append(i))

    assert [type(o) for o in outcomes] == [ReplayError, UnknownDeadLetter, Replayed]
    assert all(isinstance(o, TidingsError | Replayed) for o in outcomes)
    assert seen == [first, 999_999, second]


async def test_a_rejected_message_replayed_with_a_fix_reaches_only_the_agent_that_gave_up(
    redis: Redis, engine: AsyncEngine, namespace: str, replayer: Replayer
) -> None:
    from tidings import App, Message, Reject, Settings
    from tidings.streams import RedisTransport
    from tidings.testing import running

    strict: list[dict[str, str]] = []
    audit: list[dict[str, str]] = []
    app = App("dlq")
    orders = app.topic("sms", partitions=1)

    @app.agent(orders, name="send-sms")
    async def send(message: Message[dict[str, str]]) -> None:
        if message.value.get("to") != "+44":
            raise Reject("no such number")
        strict.append(message.value)

    @app.agent(orders, name="audit")
    async def log(message: Message[dict[str, str]]) -> None:
        audit.append(message.value)

    settings = Settings(namespace=namespace, block_ms=50, claim_idle_ms=300, lease_ttl_ms=600)
    async with running(app, settings, transport=RedisTransport(redis)) as harness:
        await orders.send({"to": "+00"})
        await harness.drain()
        await DeadLetterRecorder(redis, engine, namespace, consumer="r").record_once()
        async with engine.connect() as conn:
            letter = (await conn.execute(select(dead_letters.c.id))).scalar_one()

        await replayer.replay_one(letter, [parse_edit("to=+44")])
        await harness.drain()

    assert strict == [{"to": "+44"}]
    assert audit == [{"to": "+00"}]
