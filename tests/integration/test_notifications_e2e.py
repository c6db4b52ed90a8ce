"""The notification pipeline end to end: real Redis, real PostgreSQL, a local SMTP server
(STARTTLS + AUTH) and local Twilio / FCM / webhook stand-ins over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import time as clock
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tidings import Settings
from tidings.capture import LocalProviders
from tidings.connections import connect_redis
from tidings.dlq import DeadLetterRecorder
from tidings.dlq.edits import parse_edit
from tidings.dlq.replay import Replayer, ReplayError
from tidings.dlq.store import DeadLetters, Selection
from tidings.message import LEDGER_HEADER, Envelope, Message, Priority, encode, new_id
from tidings.notification import CHANNELS, Channel, Notification, parse_notification
from tidings.pipelines import Item
from tidings.pipelines.ledger import MessageRecord
from tidings.pipelines.notifications import Dispatch, NotificationPipeline, build
from tidings.pipelines.preferences import Preferences, QuietHours
from tidings.retry import RetryPolicies, RetryPolicy
from tidings.sinks import build_providers, leg_key
from tidings.sinks.base import TRANSIENT, Delivery, Failure, SendResult, Stopwatch
from tidings.streams import RedisTransport
from tidings.testing import Harness, running

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@dataclass
class World:
    pipeline: NotificationPipeline
    local: LocalProviders
    harness: Harness

    async def ledger(self, message_id: str) -> list[tuple[str, str, str, str | None]]:
        """(channel, recipient, state, error) rows of one notification, once all are written."""
        await self.pipeline.services.ledger.flush()
        async with self.pipeline.app.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT channel, recipient, state, last_error FROM deliveries"
                     " WHERE message_id = :id ORDER BY channel, recipient"), {"id": message_id})
            return [tuple(r) for r in rows]  # type: ignore[misc]

    async def dead_letters(self, topic: str) -> list[dict[bytes, bytes]]:
        """Every entry of ``topic``'s dead-letter streams."""
        app = self.pipeline.app
        found = app.get_topic(topic)
        transport = app.transport
        assert isinstance(transport, RedisTransport)
        entries = []
        for partition in range(found.partitions):
            entries += [f for _, f in await transport.client.xrange(found.keys(partition).dead)]
        return entries

    async def attempts(self, message_id: str) -> dict[tuple[str, str], tuple[str, int]]:
        """(channel, recipient) -> (state, attempts) of a message's deliveries."""
        async with self.pipeline.app.engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT channel, recipient, state, attempts FROM deliveries"
                " WHERE message_id = :id"), {"id": message_id})
            return {(r.channel, r.recipient): (r.state, r.attempts) for r in rows}

    async def settle(self, message_id: str, expected_rows: int, within: float = 10.0) -> list[
        tuple[str, str, str, str | None]
    ]:
        deadline = time.monotonic() + within
        while True:
            rows = await self.ledger(message_id)
            final = [r for r in rows if r[2] not in ("accepted", "sending")]
            if len(final) >= expected_rows or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)


@pytest.fixture
def inline() -> frozenset[Channel]:
    """Channels the intake stage sends itself; tests parametrize it to change it."""
    return frozenset()


@pytest.fixture
async def world(
    redis_url: str, database_url: str, namespace: str, schema_name: str,
    inline: frozenset[Channel],
) -> AsyncIterator[World]:
    settings = Settings(
        redis_url=redis_url, database_url=database_url, namespace=namespace,
        database_schema=schema_name, block_ms=50, partitions=2,
    )
    async with LocalProviders() as local:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=8))

        async def providers(_: Any) -> Any:
            return build_providers(local.settings, client, tls_context=local.client_tls)

        pipeline = build("e2e", providers=providers, inline=inline)
        pipeline.app.retry_policies = RetryPolicies(default=QUICK, by_type={"**": QUICK})
        redis = await connect_redis(redis_url, settings)
        blocking = await connect_redis(redis_url, settings)
        try:
            async with running(pipeline.app, settings, transport=RedisTransport(redis, blocking),
                               database=True) as harness:
                yield World(pipeline, local, harness)
        finally:
            await client.aclose()
            await _drop(settings, redis_url, namespace, schema_name)


async def _drop(settings: Settings, redis_url: str, namespace: str, schema: str) -> None:
    async with Redis.from_url(redis_url) as admin:
        doomed = [k async for k in admin.scan_iter(match=f"{namespace}*", count=1000)]
        if doomed:
            await admin.delete(*doomed)
    from tidings.connections import open_database

    engine = await open_database(settings)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


# Quick retries: 50 ms apart, three attempts in all.
QUICK = RetryPolicy(strategy="fixed", base=0.05, max_attempts=3)


def notification(**changes: Any) -> Notification:
    data: dict[str, Any] = {
        "type": "order.shipped",
        "channels": ["email", "sms", "push"],
        "recipient": {"user_id": "u-1", "email": "ada@example.com", "phone": "+14155550123",
                      "device_tokens": ["device-1"], "timezone": "Europe/Lisbon"},
        "content": {"subject": "Shipped", "title": "Shipped", "body": "Order 7 is on its way"},
    }
    data.update(changes)
    return parse_notification(data)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition still false"
        await asyncio.sleep(0.02)


async def test_a_notification_is_sent_on_every_channel_it_names(world: World) -> None:
    msg_id = await world.pipeline.publish(notification())
    rows = await world.settle(msg_id, 3)
    assert [(c, s) for c, _, s, _ in rows] == [("email", "sent"), ("push", "sent"),
                                              ("sms", "sent")]
    mail = world.local.smtp.messages[0]
    assert mail.tls
    assert mail.login == "tidings"
    assert mail.message["Subject"] == "Shipped"
    assert [s.body for s in world.local.http.sms] == ["Order 7 is on its way"]
    assert [p.token for p in world.local.http.push] == ["device-1"]


async def test_a_template_is_rendered_per_channel_and_locale_with_fallback(world: World) -> None:
    store = world.pipeline.services.templates
    await store.put("shipped", "sms", "pt", body="Encomenda {{ order }} enviada")
    await store.put("shipped", "sms", "en", body="Order {{ order }} shipped")
    msg_id = await world.pipeline.publish(notification(
        channels=["sms"], content=None, template="shipped", data={"order": "42"},
        recipient={"user_id": "u-2", "phone": "+14155550124", "locale": "pt-BR"},
    ))
    await world.settle(msg_id, 1)
    assert [s.body for s in world.local.http.sms] == ["Encomenda 42 enviada"]


@pytest.mark.parametrize("inline", [frozenset(), frozenset(CHANNELS)], ids=["hop", "inline"])
async def test_publishing_the_same_idempotency_key_twice_sends_once(world: World) -> None:
    first = await world.pipeline.publish(notification(channels=["sms"], idempotency_key="k-1"))
    await world.pipeline.publish(notification(channels=["sms"], idempotency_key="k-1"))
    await world.settle(first, 1)
    await world.harness.drain()
    await asyncio.sleep(0.2)
    assert len(world.local.http.sms) == 1
    assert world.pipeline.tally.outcomes.get(("*", "duplicate")) == 1


@pytest.mark.parametrize("inline", [frozenset(), frozenset({"sms"})], ids=["hop", "inline"])
async def test_one_message_read_twice_in_one_batch_is_sent_once(world: World) -> None:
    intake = world.pipeline.intake
    # One key, one partition: the reader wakes for the first entry and then reads the rest,
    # the two copies of one message among them, as one batch.
    entries = [intake.prepare(notification(channels=["sms"]), key="u-1") for _ in range(11)]
    twice = entries[-1]
    await world.pipeline.app.transport.add(
        [(stream, fields) for _, stream, fields in [*entries, twice]])

    rows = await world.settle(twice[0], 1)
    await asyncio.sleep(0.3)  # the copy waits to look again: it must not have sent meanwhile

    assert [s for _, _, s, _ in rows] == ["sent"]
    assert world.pipeline.tally.outcomes.get(("sms", "sent")) == 11


@pytest.mark.parametrize("inline", [frozenset(), frozenset(CHANNELS)], ids=["hop", "inline"])
async def test_an_opted_out_channel_is_skipped_and_recorded(world: World) -> None:
    await world.pipeline.services.preferences.put(
        Preferences(user_id="u-3", tenant="default", opted_out=frozenset({"sms"}))
    )
    msg_id = await world.pipeline.publish(notification(
        channels=["email", "sms"], recipient={"user_id": "u-3", "email": "u3@example.com",
                                              "phone": "+14155550125"},
    ))
    rows = await world.settle(msg_id, 2)
    assert [(c, s) for c, _, s, _ in rows] == [("email", "sent"), ("sms", "filtered")]
    assert "opted out" in (rows[1][3] or "")
    assert world.local.http.sms == type(world.local.http.sms)()


@pytest.mark.parametrize("inline", [frozenset(), frozenset(CHANNELS)], ids=["hop", "inline"])
async def test_quiet_hours_delay_a_notification_but_not_a_critical_one(world: World) -> None:
    everywhere = QuietHours(start=clock(0, 0), end=clock(23, 59))
    await world.pipeline.services.preferences.put(
        Preferences(user_id="u-4", tenant="default", quiet_hours=everywhere, timezone="UTC")
    )
    recipient = {"user_id": "u-4", "phone": "+14155550126"}
    quiet = await world.pipeline.publish(notification(channels=["sms"], recipient=recipient))
    urgent = await world.pipeline.publish(notification(
        channels=["sms"], recipient=recipient, priority="critical",
    ))
    assert [s for _, _, s, _ in await world.settle(quiet, 1)] == ["delayed"]
    assert [s for _, _, s, _ in await world.settle(urgent, 1)] == ["sent"]
    async with world.pipeline.app.engine.connect() as conn:
        held = (await conn.execute(text("SELECT count(*) FROM schedules"))).scalar()
    assert held == 1


@pytest.mark.parametrize("inline", [frozenset(CHANNELS)])
async def test_legs_claimed_with_their_message_and_not_sent_are_left_unclaimed(
    world: World,
) -> None:
    # Inline legs are claimed with their message, before routing: opted out, delayed or not
    # rendered, they must not stay claimed (another worker would take them for a send whose
    # outcome is unknown), and this one must not remember them.
    prefs = world.pipeline.services.preferences
    await prefs.put(Preferences(user_id="u-3", tenant="default", opted_out=frozenset({"sms"})))
    await prefs.put(Preferences(user_id="u-4", tenant="default", timezone="UTC",
                                quiet_hours=QuietHours(start=clock(0, 0), end=clock(23, 59))))
    await world.pipeline.services.templates.put("broken", "push", "en", body="{{ x.y }}")
    opted_out = await world.pipeline.publish(notification(
        channels=["email", "sms"], recipient={"user_id": "u-3", "email": "u3@example.com",
                                              "phone": "+14155550125"}))
    quiet = await world.pipeline.publish(notification(
        channels=["sms"], recipient={"user_id": "u-4", "phone": "+14155550126"}))
    broken = await world.pipeline.publish(notification(
        channels=["push"], content=None, template="broken", data={}))

    assert [s for _, _, s, _ in await world.settle(opted_out, 2)] == ["sent", "filtered"]
    assert [s for _, _, s, _ in await world.settle(quiet, 1)] == ["delayed"]
    assert [s for _, _, s, _ in await world.settle(broken, 1)] == ["dead"]
    async with world.pipeline.app.engine.connect() as conn:
        claimed = (await conn.execute(text(
            "SELECT count(*) FROM deliveries WHERE claim_token IS NOT NULL"))).scalar()
    assert claimed == 0
    assert await world.pipeline.services.sender.intents.give_back() == 0


@pytest.mark.parametrize("inline", [frozenset(), frozenset(CHANNELS)], ids=["hop", "inline"])
async def test_a_template_that_fails_to_render_is_a_dead_leg_and_a_dead_letter(
    world: World,
) -> None:
    store = world.pipeline.services.templates
    await store.put("broken", "sms", "en", body="Hello {{ missing.name }}")
    msg_id = await world.pipeline.publish(notification(
        channels=["sms"], content=None, template="broken", data={},
    ))
    rows = await world.settle(msg_id, 1)
    assert [(c, s) for c, _, s, _ in rows] == [("sms", "dead")]
    assert "broken" in (rows[0][3] or "")
    [dead] = await world.dead_letters("notifications")
    assert dead[b"dead.kind"] == b"permanent"


async def test_auto_channels_fall_back_from_an_invalid_push_token_to_sms(world: World) -> None:
    await world.pipeline.services.preferences.put(
        Preferences(user_id="u-5", tenant="default", channel_order=("push", "sms"))
    )
    msg_id = await world.pipeline.publish(notification(
        channels="auto", recipient={"user_id": "u-5", "phone": "+14155550127",
                                    "device_tokens": ["invalid-token"]},
    ))
    rows = await world.settle(msg_id, 2)
    assert [(c, s) for c, _, s, _ in rows] == [("push", "dead"), ("sms", "sent")]
    assert len(world.local.http.sms) == 1


async def test_a_provider_answering_garbage_is_a_recorded_failure(world: World) -> None:
    world.local.http.fault("sms", status=200, body=b"<html>oops</html>", times=1)
    msg_id = await world.pipeline.publish(notification(channels=["sms"]))
    rows = await world.settle(msg_id, 1)
    assert [(c, s) for c, _, s, _ in rows] == [("sms", "failed")]
    assert rows[0][3]


async def test_a_redelivered_dispatch_does_not_send_a_leg_the_ledger_has_as_sent(
    world: World,
) -> None:
    n = notification(channels=["sms"])
    msg_id = await world.pipeline.publish(n)
    await world.settle(msg_id, 1)
    dispatch = Dispatch(
        message_id=msg_id, notification=n, channels=("sms",), mode="fanout",
        contents={"sms": n.content}, accepted_ms=0,  # type: ignore[dict-item]
    )
    again = Message(dispatch, Envelope(id="redelivery"), "1-0", 0, deliveries=2)
    await world.pipeline.deliver([Item(again, dispatch, None, Priority.NORMAL)])
    assert len(world.local.http.sms) == 1
    assert world.pipeline.tally.outcomes[("sms", "already_sent")] == 1


async def _the_dead_letter(world: World) -> dict[str, Any]:
    """Record the dead-letter streams into PostgreSQL; the one letter there is."""
    app = world.pipeline.app
    transport = app.transport
    assert isinstance(transport, RedisTransport)
    recorder = DeadLetterRecorder(transport.client, app.engine, app.namespace, consumer="t")
    assert await recorder.record_once() == 1
    [letter] = await DeadLetters(app.engine).find(Selection(), 10)
    return letter


async def _email_and_an_invalid_number(world: World) -> str:
    """Publish (and drain) a notification whose e-mail goes out and whose SMS cannot."""
    bad = {"user_id": "u-9", "email": "u9@example.com", "phone": "+15005550001"}
    msg_id = await world.pipeline.publish(notification(channels=["email", "sms"],
                                                       recipient=bad))
    await world.harness.drain()
    return msg_id


async def _entries(world: World, topic: str) -> int:
    """How many entries ``topic`` holds over all its partitions and lanes."""
    found = world.pipeline.app.get_topic(topic)
    transport = world.pipeline.app.transport
    assert isinstance(transport, RedisTransport)
    lengths = [await transport.client.xlen(lane) for partition in range(found.partitions)
               for lane in found.keys(partition).lanes]
    return sum(lengths)


@pytest.mark.parametrize("inline", [frozenset(CHANNELS)])
async def test_inline_channels_are_sent_by_the_intake_stage_with_no_hop(world: World) -> None:
    msg_id = await world.pipeline.publish(notification())
    rows = await world.settle(msg_id, 3)
    assert [(c, s) for c, _, s, _ in rows] == [("email", "sent"), ("push", "sent"),
                                              ("sms", "sent")]
    assert len(world.local.smtp.messages) == 1
    assert len(world.local.http.sms) == len(world.local.http.push) == 1
    for channel in ("email", "sms", "push"):
        assert await _entries(world, f"notifications.{channel}") == 0


@pytest.mark.parametrize("inline", [frozenset({"sms"})])
async def test_inline_and_hopping_channels_mix_in_one_notification(world: World) -> None:
    msg_id = await world.pipeline.publish(notification(channels=["email", "sms"]))
    rows = await world.settle(msg_id, 2)
    assert [(c, s) for c, _, s, _ in rows] == [("email", "sent"), ("sms", "sent")]
    assert await _entries(world, "notifications.email") == 1
    assert await _entries(world, "notifications.sms") == 0


@pytest.mark.parametrize("inline", [frozenset(CHANNELS)])
async def test_an_inline_transient_failure_is_tried_again_by_its_channel_stage_once_sent(
    world: World,
) -> None:
    world.local.http.fault("sms", status=503, times=1)
    msg_id = await world.pipeline.publish(notification())
    await world.harness.drain()
    assert await world.attempts(msg_id) == {
        ("email", "ada@example.com"): ("sent", 1), ("push", "device-1"): ("sent", 1),
        ("sms", "+14155550123"): ("sent", 2),
    }
    assert len(world.local.smtp.messages) == 1
    assert len(world.local.http.sms) == len(world.local.http.push) == 1
    assert await _entries(world, "notifications.sms") == 1, "handed to the sms stage"
    assert await _entries(world, "notifications.email") == 0
    assert await world.dead_letters("notifications") == []


@pytest.mark.parametrize("inline", [frozenset({"sms"})])
async def test_an_inline_permanent_failure_is_its_channel_s_dead_letter_and_spares_the_rest(
    world: World,
) -> None:
    msg_id = await _email_and_an_invalid_number(world)
    assert await world.attempts(msg_id) == {("email", "u9@example.com"): ("sent", 1),
                                            ("sms", "+15005550001"): ("dead", 1)}
    assert len(world.local.smtp.messages) == 1, "the e-mail leg went out all the same"
    assert world.local.http.counts.by_status == {400: 1}, "a permanent failure is not retried"
    assert await world.dead_letters("notifications") == []
    [dead] = await world.dead_letters("notifications.sms")
    assert dead[b"dead.kind"] == b"permanent"
    assert b"21211" in dead[b"dead.reason"] or b"not a valid" in dead[b"dead.reason"]


@pytest.mark.parametrize("inline", [frozenset(CHANNELS)])
async def test_a_forced_replay_of_an_inline_letter_resends_only_its_own_channel(
    world: World,
) -> None:
    msg_id = await _email_and_an_invalid_number(world)
    letter = await _the_dead_letter(world)
    fix = parse_edit('notification.recipient.phone="+14155550199"')

    await (await _replayer(world)).replay_one(letter["id"], [fix], force=True)
    await world.harness.drain()
    assert len(world.local.smtp.messages) == 1, "the delivered e-mail was not sent again"
    assert [s.to for s in world.local.http.sms] == ["+14155550199"]
    legs = await world.attempts(msg_id)
    assert legs[("email", "u9@example.com")] == ("sent", 1)
    assert legs[("sms", "+14155550199")] == ("sent", 1)


# -- failures: retries, dead letters, replay -----------------------------------------------


async def test_a_transient_provider_failure_is_retried_and_then_sent(world: World) -> None:
    world.local.http.fault("sms", status=503, times=1)
    msg_id = await world.pipeline.publish(notification(channels=["sms"]))
    await world.harness.drain()
    assert await world.attempts(msg_id) == {("sms", "+14155550123"): ("sent", 2)}
    assert len(world.local.http.sms) == 1
    assert await world.dead_letters("notifications.sms") == []


async def test_a_provider_failing_every_attempt_ends_in_the_dead_letters_as_exhausted(
    world: World,
) -> None:
    world.local.http.fault("sms", status=503, times=None)
    msg_id = await world.pipeline.publish(notification(channels=["sms"]))
    await world.harness.drain()
    assert await world.attempts(msg_id) == {("sms", "+14155550123"): ("dead", 3)}
    [dead] = await world.dead_letters("notifications.sms")
    assert dead[b"dead.kind"] == b"exhausted"
    assert dead[b"dead.attempts"] == b"3"


async def test_a_permanent_provider_failure_goes_straight_to_the_dead_letters(
    world: World,
) -> None:
    bad = {"user_id": "u-9", "phone": "+15005550001"}  # Twilio's "not a valid number"
    msg_id = await world.pipeline.publish(notification(channels=["sms"], recipient=bad))
    await world.harness.drain()
    assert await world.attempts(msg_id) == {("sms", "+15005550001"): ("dead", 1)}
    [dead] = await world.dead_letters("notifications.sms")
    assert dead[b"dead.kind"] == b"permanent"
    assert b"21211" in dead[b"dead.reason"] or b"not a valid" in dead[b"dead.reason"]
    assert world.local.http.counts.by_status == {400: 1}, "a permanent failure is not retried"


async def test_a_replayed_dead_letter_with_an_edited_number_is_delivered_once(
    world: World,
) -> None:
    app = world.pipeline.app
    bad = {"user_id": "u-9", "phone": "+15005550001"}
    msg_id = await world.pipeline.publish(notification(channels=["sms"], recipient=bad))
    await world.harness.drain()
    letter = await _the_dead_letter(world)
    transport = app.transport
    assert isinstance(transport, RedisTransport)
    replayer = Replayer(app.engine, transport.client, app.namespace, by="ops@example.com")
    fix = parse_edit('notification.recipient.phone="+14155550199"')

    await replayer.replay_one(letter["id"], [fix])
    await world.harness.drain()
    with pytest.raises(ReplayError):
        await replayer.replay_one(letter["id"], [fix])
    await world.harness.drain()

    assert [s.to for s in world.local.http.sms] == ["+14155550199"]
    legs = await world.attempts(msg_id)
    assert legs[("sms", "+14155550199")] == ("sent", 1)
    shown = await DeadLetters(app.engine).show(letter["id"])
    [audit] = shown["replay_history"]
    assert audit["replayed_by"] == "ops@example.com"
    assert audit["edits"] == {"notification.recipient.phone": "+14155550199"}


async def _stale_intent(world: World, message_id: str, channel: str, recipient: str) -> None:
    """A 'sending' row left by a worker that died mid-call an hour ago."""
    async with world.pipeline.app.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO deliveries (message_id, channel, recipient, state, updated_at)"
            " VALUES (:m, :c, :r, 'sending', now() - interval '1 hour')"
        ), {"m": message_id, "c": channel, "r": recipient})


async def _redeliver(world: World, n: Notification, msg_id: str, channel: str) -> None:
    dispatch = Dispatch(
        message_id=msg_id, notification=n, channels=(channel,), mode="fanout",  # type: ignore[arg-type]
        contents={channel: n.content}, accepted_ms=0,  # type: ignore[dict-item]
    )
    again = Message(dispatch, Envelope(id="redelivery"), "1-0", 0, deliveries=2)
    await world.pipeline.deliver([Item(again, dispatch, None, Priority.NORMAL)])
    await world.pipeline.services.ledger.flush()


async def test_a_send_of_unknown_outcome_is_not_repeated_on_a_provider_that_cannot_dedupe(
    world: World,
) -> None:
    n = notification(channels=["sms"])
    msg_id = new_id()  # accepted earlier; only its message row exists
    await world.pipeline.services.ledger.claim_idempotency_keys([
        MessageRecord.from_notification(msg_id, "notifications", n)])
    await _stale_intent(world, msg_id, "sms", "+14155550123")
    await _redeliver(world, n, msg_id, "sms")
    assert world.local.http.counts.by_status == {}, "not sent again"
    assert (await world.attempts(msg_id))[("sms", "+14155550123")][0] == "dead"


async def test_a_send_of_unknown_outcome_is_repeated_with_its_key_on_a_deduplicating_webhook(
    world: World,
) -> None:
    n = notification(channels=["webhook"])
    msg_id = new_id()
    await world.pipeline.services.ledger.claim_idempotency_keys([
        MessageRecord.from_notification(msg_id, "notifications", n)])
    [address] = n.recipient.addresses("webhook")
    await _stale_intent(world, msg_id, "webhook", address)
    await _redeliver(world, n, msg_id, "webhook")
    [hook] = world.local.http.webhooks
    assert orjson.loads(hook.body)["id"] == leg_key(n, "webhook", address)
    assert (await world.attempts(msg_id))[("webhook", address)][0] == "sent"


async def _letter(world: World, n: Notification, msg_id: str, channel: str) -> int:
    """Dead-letter a channel stage's dispatch as its consumer would, record it; its id."""
    app = world.pipeline.app
    transport = app.transport
    assert isinstance(transport, RedisTransport)
    dispatch = Dispatch(message_id=msg_id, notification=n, channels=(channel,),  # type: ignore[arg-type]
                        mode="fanout", contents={channel: n.content}, accepted_ms=0)  # type: ignore[dict-item]
    envelope = Envelope(new_id(), key="u-1", headers={LEDGER_HEADER: msg_id})
    fields = encode(envelope, dispatch.model_dump_json().encode())
    fields.update({b"dead.kind": b"permanent", b"dead.reason": b"failed",
                   b"dead.group": f"notify.{channel}".encode()})
    topic = app.get_topic(f"notifications.{channel}")
    await transport.client.xadd(topic.keys(0).dead, fields)  # type: ignore[arg-type]
    recorder = DeadLetterRecorder(transport.client, app.engine, app.namespace, consumer="t")
    await recorder.record_once()
    [letter] = await DeadLetters(app.engine).find(Selection(), 10)
    return int(letter["id"])


async def _replayer(world: World) -> Replayer:
    app = world.pipeline.app
    assert isinstance(app.transport, RedisTransport)
    return Replayer(app.engine, app.transport.client, app.namespace, by="ops")


async def test_a_plain_replay_does_not_resend_a_leg_whose_outcome_is_unknown(
    world: World,
) -> None:
    n = notification(channels=["sms"])
    msg_id = new_id()
    await world.pipeline.services.ledger.claim_idempotency_keys([
        MessageRecord.from_notification(msg_id, "notifications", n)])
    await _stale_intent(world, msg_id, "sms", "+14155550123")
    await _redeliver(world, n, msg_id, "sms")  # its worker died mid-call: dead, not resent
    letter = await _letter(world, n, msg_id, "sms")

    await (await _replayer(world)).replay_one(letter)
    await world.harness.drain()
    assert world.local.http.counts.by_status == {}, "a plain replay does not send it"

    await (await _replayer(world)).replay_one(letter, force=True)
    await world.harness.drain()
    assert world.local.http.counts.by_status == {201: 1}, "--force does, once"


async def test_replaying_one_channel_s_letter_leaves_the_other_channels_legs_alone(
    world: World,
) -> None:
    n = notification(channels=["sms", "email"])
    msg_id = new_id()
    await world.pipeline.services.ledger.claim_idempotency_keys([
        MessageRecord.from_notification(msg_id, "notifications", n)])
    async with world.pipeline.app.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO deliveries (message_id, channel, recipient, state) VALUES"
            " (:m, 'sms', '+14155550123', 'dead'), (:m, 'email', 'ada@example.com', 'sent')"),
            {"m": msg_id})
    letter = await _letter(world, n, msg_id, "sms")

    await (await _replayer(world)).replay_one(letter, force=True)
    await world.harness.drain()
    legs = await world.attempts(msg_id)
    assert legs[("email", "ada@example.com")][0] == "sent"
    assert legs[("sms", "+14155550123")][0] == "sent"
    assert not world.local.smtp.messages, "the delivered e-mail was not sent again"


class LostReply:
    """An SMS provider whose every request may have arrived: the reply never came."""

    name, channel = "lost-reply", "sms"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls += 1
        return Stopwatch(self.name, delivery).failed(Failure(
            TRANSIENT, "no reply in time (ReadTimeout)", code="timeout", maybe_delivered=True))

    async def aclose(self) -> None:
        """Nothing to close."""


async def test_a_send_that_may_have_arrived_is_not_retried_on_a_provider_that_cannot_dedupe(
    world: World,
) -> None:
    lost = LostReply()
    world.pipeline.services.sender.providers["sms"] = lost
    msg_id = await world.pipeline.publish(notification(channels=["sms"]))
    await world.harness.drain()
    assert lost.calls == 1
    assert await world.attempts(msg_id) == {("sms", "+14155550123"): ("dead", 1)}
    [dead] = await world.dead_letters("notifications.sms")
    assert dead[b"dead.reason"].startswith(b"sms via lost-reply: outcome unknown: no reply")


class Stuck:
    """An SMS provider whose calls never return (until cancelled)."""

    name, channel = "stuck", "sms"

    def __init__(self) -> None:
        self.calls = asyncio.Event()

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Nothing to close."""


async def test_legs_whose_provider_was_never_called_are_given_back_when_interrupted(
    world: World,
) -> None:
    sender = world.pipeline.services.sender
    stuck = Stuck()
    sender.providers["sms"], sender.concurrency = stuck, 1  # one call at a time
    items, ids = [], []
    for phone in ("+14155550101", "+14155550102"):
        n = notification(channels=["sms"], recipient={"user_id": "u-1", "phone": phone})
        msg_id = new_id()
        await world.pipeline.services.ledger.claim_idempotency_keys([
            MessageRecord.from_notification(msg_id, "notifications", n)])
        dispatch = Dispatch(message_id=msg_id, notification=n, channels=("sms",),
                            mode="fanout", contents={"sms": n.content},  # type: ignore[dict-item]
                            accepted_ms=0)
        message = Message(dispatch, Envelope(id=new_id()), "1-0", 0)
        items.append(Item(message, dispatch, None, Priority.NORMAL))
        ids.append(msg_id)

    delivering = asyncio.create_task(world.pipeline.deliver(items))
    await asyncio.wait_for(stuck.calls.wait(), 10)
    delivering.cancel()  # the shutdown deadline
    with pytest.raises(asyncio.CancelledError):
        await delivering

    first, second = [await world.attempts(i) for i in ids]
    states = sorted([*first.values(), *second.values()])
    assert states == [("failed", 0), ("sending", 0)], "the called leg stays unknown, the other"\
        " is free to be sent by the redelivery"


async def test_a_chain_that_delivers_on_a_later_attempt_ends_the_legs_it_no_longer_needs(
    world: World,
) -> None:
    await world.pipeline.services.preferences.put(
        Preferences(user_id="u-6", tenant="default", channel_order=("push", "sms"))
    )
    world.local.http.fault("push", status=503, times=1)  # attempt 1: push fails, then sms
    world.local.http.fault("sms", status=503, times=1)
    msg_id = await world.pipeline.publish(notification(
        channels="auto", recipient={"user_id": "u-6", "phone": "+14155550128",
                                    "device_tokens": ["device-6"]},
    ))
    await world.harness.drain()  # attempt 2: push delivers, sms is not needed any more
    legs = await world.attempts(msg_id)
    assert legs[("push", "device-6")] == ("sent", 2)
    assert legs[("sms", "+14155550128")][0] == "dead"
    assert len(world.local.http.sms) == 0
