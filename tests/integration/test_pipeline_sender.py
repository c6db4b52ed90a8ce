"""The deliver step's claims against a real PostgreSQL when a batch breaks half-way: no leg is
sent after its claim was given back, and none claimed is left 'sending' with nobody to send it."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from faulty_pools import SlowPool, lose_the_reply
from tidings import App, Settings
from tidings.direct import DirectPool
from tidings.message import Envelope, Message, Priority, now_ms
from tidings.notification import Channel, Content, Notification, Recipient
from tidings.pipelines.graph import Item
from tidings.pipelines.intents import CLAIMED, Intents
from tidings.pipelines.ledger import LedgerError, LedgerWriter, MessageRecord
from tidings.pipelines.notifications import Dispatch, NotificationPipeline, Tally
from tidings.pipelines.sending import Sender
from tidings.retry import RetryPolicy
from tidings.sinks.base import PERMANENT, TRANSIENT, Delivery, Failure, Provider, SendResult
from tidings.tables import deliveries
from tidings.testing import running

pytestmark = [pytest.mark.postgres]


async def _messages(direct: DirectPool, *ids: str) -> None:
    writer = LedgerWriter(direct)
    await writer.claim_idempotency_keys([
        MessageRecord(i, "notifications", {"id": i}, tenant="t1", type="order.shipped")
        for i in ids])
    await writer.aclose()


def _item(message_id: str) -> Item:
    content = Content(body="hi")
    n = Notification(type="order.shipped", channels=["email"], content=content,
                     recipient=Recipient(user_id="u1", email=f"{message_id}@example.com"))
    d = Dispatch(message_id=message_id, notification=n, channels=("email",), mode="fanout",
                 contents={"email": content}, accepted_ms=now_ms())
    return Item(Message(d, Envelope(id=message_id), "0-1", 0), d, None, Priority.NORMAL)


class Breaking:
    """Raises out of the call for m1 after a moment (a client library's inner task cancelled
    under it), is slow for m2, accepts the rest; counts each address's calls."""

    name, channel = "breaking", "email"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls[delivery.address] += 1
        if delivery.address.startswith("m1@"):
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError
        if delivery.address.startswith("m2@"):
            await asyncio.sleep(0.3)
        return SendResult(self.name, "email", delivery.address, delivery.idempotency_key,
                          0.0, 1.0, provider_message_id="pm")

    async def aclose(self) -> None:
        return None


async def _states(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(deliveries.c.message_id, deliveries.c.state))).all()
    return {message_id: state for message_id, state in rows}


@pytest.fixture
async def ledger(direct: DirectPool) -> Any:
    writer = LedgerWriter(direct, max_batch=500, max_delay_ms=20)
    yield writer
    await writer.aclose()


async def test_once_a_provider_call_breaks_no_other_starts_and_the_unsent_are_given_back(
    engine: AsyncEngine, direct: DirectPool, ledger: LedgerWriter
) -> None:
    await _messages(direct, "m1", "m2", "m3")
    provider = Breaking()
    sender = Sender(ledger, Intents(direct, stale_after_s=0), {"email": provider},
                    lambda _d: RetryPolicy(), concurrency=2)

    with pytest.raises(asyncio.CancelledError):
        await sender.deliver([_item("m1"), _item("m2"), _item("m3")], Tally())

    await asyncio.sleep(0.4)  # a sender left running would have taken m3 by now
    await ledger.flush()
    # m2's call was in flight: it ended and was recorded. m3's never started, and its claim
    # was given back. m1's outcome is unknown: it stays 'sending'.
    assert provider.calls == {"m1@example.com": 1, "m2@example.com": 1}
    assert await _states(engine) == {"m1": "sending", "m2": "sent", "m3": "failed"}
    await sender.deliver([_item("m3")], Tally())
    assert provider.calls["m3@example.com"] == 1


async def test_a_leg_whose_message_left_the_ledger_is_dead_lettered_unsent_and_the_rest_sent(
    engine: AsyncEngine, direct: DirectPool, ledger: LedgerWriter
) -> None:
    await _messages(direct, "m3")  # m9's message was deleted (retention) while it waited
    provider = Breaking()
    sender = Sender(ledger, Intents(direct, stale_after_s=0), {"email": provider},
                    lambda _d: RetryPolicy(), concurrency=2)
    gone, kept = _item("m9"), _item("m3")

    await sender.deliver([gone, kept], Tally())
    await ledger.flush()

    assert provider.calls == {"m3@example.com": 1}
    assert await _states(engine) == {"m3": "sent"}
    assert gone.rejected is not None
    assert kept.rejected is None
    assert "no longer in the ledger" in gone.rejected[0]


async def test_a_retry_sends_again_only_the_legs_that_failed_transiently(
    engine: AsyncEngine, direct: DirectPool, ledger: LedgerWriter
) -> None:
    class Push:  # no idempotency key: a lost reply is an outcome unknown
        name, channel = "fcm", "push"

        def __init__(self) -> None:
            self.calls: Counter[str] = Counter()

        async def send(self, delivery: Delivery) -> SendResult:
            self.calls[delivery.address] += 1
            failure = {
                "lost": Failure(TRANSIENT, "no reply in time", code="timeout",
                                maybe_delivered=True),
                "gone": Failure(PERMANENT, "UNREGISTERED", code="bad_address"),
                "busy": Failure(TRANSIENT, "HTTP 503", http_status=503),
            }[delivery.address]
            return SendResult(self.name, "push", delivery.address, delivery.idempotency_key,
                              0.0, 1.0, failure=failure)

        async def aclose(self) -> None:
            return None

    def attempt(n: int) -> Item:
        content = Content(body="hi")
        note = Notification(type="order.shipped", channels=["push"], content=content,
                            recipient=Recipient(user_id="u1", device_tokens=["lost", "gone",
                                                                             "busy"]))
        d = Dispatch(message_id="m1", notification=note, channels=("push",), mode="fanout",
                     contents={"push": content}, accepted_ms=now_ms())
        return Item(Message(d, Envelope(id="m1", attempt=n), "0-1", 0), d, None,
                    Priority.NORMAL)

    await _messages(direct, "m1")
    provider = Push()
    sender = Sender(ledger, Intents(direct, stale_after_s=0), {"push": provider},
                    lambda _d: RetryPolicy(max_attempts=2))
    first, second = attempt(1), attempt(2)

    await sender.deliver([first], Tally())
    await ledger.flush()  # as the batch's settle does before its retries go out
    await sender.deliver([second], Tally())
    await ledger.flush()

    assert first.retrying is not None
    assert provider.calls == {"lost": 1, "gone": 1, "busy": 2}, "the lost reply is not resent"
    assert second.rejected is not None
    assert second.rejected[1] == "exhausted"
    async with engine.connect() as conn:
        rows = await conn.execute(select(deliveries.c.recipient, deliveries.c.state))
        assert dict(rows.all()) == {"lost": "dead", "gone": "dead", "busy": "dead"}


async def test_a_wave_cancelled_records_the_calls_that_ended_and_gives_back_the_rest(
    engine: AsyncEngine, direct: DirectPool, ledger: LedgerWriter
) -> None:
    class Slow(Breaking):  # m1 at once, m2 slowly, m3 never reached (one call at a time)
        async def send(self, delivery: Delivery) -> SendResult:
            self.calls[delivery.address] += 1
            if delivery.address.startswith("m2@"):
                await asyncio.sleep(5)
            return SendResult(self.name, "email", delivery.address, delivery.idempotency_key,
                              0.0, 1.0, provider_message_id="pm")

    await _messages(direct, "m1", "m2", "m3")
    sender = Sender(ledger, Intents(direct, stale_after_s=0), {"email": Slow()},
                    lambda _d: RetryPolicy(), concurrency=1)
    delivering = asyncio.create_task(
        sender.deliver([_item("m1"), _item("m2"), _item("m3")], Tally()))
    await asyncio.sleep(0.3)

    delivering.cancel()  # the shutdown deadline
    await asyncio.gather(delivering, return_exceptions=True)
    await ledger.flush()

    # m1 was sent and is recorded so: not left 'sending', to be taken for an outcome unknown.
    assert await _states(engine) == {"m1": "sent", "m2": "sending", "m3": "failed"}


async def test_a_wave_cancelled_while_recording_its_outcomes_records_them_all(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    class Instant(Breaking):
        async def send(self, delivery: Delivery) -> SendResult:
            return SendResult(self.name, "email", delivery.address, delivery.idempotency_key,
                              0.0, 1.0, provider_message_id="pm")

    await _messages(direct, "m1", "m2")
    ledger = LedgerWriter(SlowPool(direct), max_batch=1)  # each record waits for its flush
    sender = Sender(ledger, Intents(direct, stale_after_s=0), {"email": Instant()},
                    lambda _d: RetryPolicy())
    delivering = asyncio.create_task(sender.deliver([_item("m1"), _item("m2")], Tally()))
    await asyncio.sleep(0.15)  # both sent; m1's record is being flushed

    delivering.cancel()  # the shutdown deadline
    await asyncio.gather(delivering, return_exceptions=True)
    await asyncio.sleep(0.8)
    await ledger.aclose()

    # Both were sent: neither may be left 'sending', to be taken for an outcome unknown.
    assert await _states(engine) == {"m1": "sent", "m2": "sent"}


async def test_legs_claimed_when_recording_another_leg_fails_are_given_back(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    class DownLedger(LedgerWriter):  # a flush failing while PostgreSQL restarts
        async def record_delivery(self, *args: Any, **kwargs: Any) -> None:
            raise LedgerError("flush failed: connection lost", rows=1, retained=True)

    await _messages(direct, "m1", "m3")
    # m1's leg is a stale 'sending' row (a worker died mid-send): settling it records it.
    await Intents(direct, stale_after_s=0).claim([("m1", "email", "m1@example.com")])
    provider = Breaking()
    sender = Sender(DownLedger(direct), Intents(direct, stale_after_s=0), {"email": provider},
                    lambda _d: RetryPolicy())

    with pytest.raises(LedgerError):
        await sender.deliver([_item("m1"), _item("m3")], Tally())

    assert provider.calls == {}
    assert (await _states(engine)) == {"m1": "sending", "m3": "failed"}


async def test_a_leg_given_twice_to_one_claim_keeps_its_remembered_token(
    direct: DirectPool
) -> None:
    await _messages(direct, "m1")
    leg = ("m1", "email", "m1@example.com")
    intents = Intents(direct, stale_after_s=0)
    await lose_the_reply(intents, direct, lambda: intents.claim([leg]))

    found = await intents.claim([leg, leg])  # the message read twice in one batch

    assert found[leg].state == CLAIMED


async def test_give_back_waits_for_a_release_whose_caller_was_cancelled(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    await _messages(direct, "m1")
    leg = ("m1", "email", "m1@example.com")
    intents = Intents(SlowPool(direct))
    token = (await intents.claim([leg]))[leg].token
    assert token is not None
    releasing = asyncio.create_task(intents.release({leg: token}))
    await asyncio.sleep(0.05)
    releasing.cancel()  # a second cancellation of a wave that was giving its legs back

    await intents.give_back()

    assert await _states(engine) == {"m1": "failed"}


async def test_give_back_leaves_alone_a_leg_claimed_again_meanwhile(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    await _messages(direct, "m1")
    leg = ("m1", "email", "m1@example.com")
    intents = Intents(direct, stale_after_s=0)
    await lose_the_reply(intents, direct, lambda: intents.claim([leg]))
    intents._direct = SlowPool(direct)  # the release is slow: the claim runs first

    _, claimed = await asyncio.gather(intents.give_back(), intents.claim([leg]))

    # Whichever statement ran first, the claim never finds the leg its own while the release
    # gives it back under it (that would let it be sent, and then claimed and sent again).
    outcome = (claimed[leg].state, (await _states(engine))["m1"])
    assert outcome in {(CLAIMED, "sending"), ("sending", "failed")}, outcome


async def test_a_pipeline_that_stops_gives_back_the_legs_its_worker_could_not_be_sure_of(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    async def providers(_app: object) -> dict[Channel, Provider]:
        return {"email": Breaking()}

    settings = Settings(namespace="test", block_ms=50, database_url=database_url,
                        database_schema=schema_name)
    pipeline = NotificationPipeline(App("stopping"), providers=providers)
    leg = ("m1", "email", "m1@example.com")
    async with running(pipeline.app, settings, database=True):
        services = pipeline.services
        await _messages(services.direct, "m1")
        intents = services.sender.intents
        await lose_the_reply(intents, services.direct, lambda: intents.claim([leg]))
        assert await _states(engine) == {"m1": "sending"}

    assert await _states(engine) == {"m1": "failed"}, "given back as it stopped"
