"""The legs of a new message claimed by the statement that claims its idempotency key, against
a real PostgreSQL: claimed only for a message written now, handed out once without a second
statement, and never left 'sending' with nobody to send them."""

from __future__ import annotations

import asyncio
import random
import string
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from faulty_pools import LostReplies, Unreachable
from tidings import App, Settings
from tidings.direct import DirectPool
from tidings.message import Envelope, Message, Priority, now_ms
from tidings.notification import MAX_TOKEN, Channel, Content, Notification, Recipient
from tidings.pipelines import notifications
from tidings.pipelines.graph import Item
from tidings.pipelines.intents import CLAIMED, Intents
from tidings.pipelines.ledger import Intent, LedgerError, LedgerWriter, MessageRecord
from tidings.pipelines.notifications import NotificationPipeline
from tidings.pipelines.routing import Rule
from tidings.sinks.base import Delivery, Provider, SendResult
from tidings.tables import deliveries
from tidings.testing import running

pytestmark = [pytest.mark.postgres]

PHONE = "+14155550123"
LEG = ("m1", "sms", PHONE)


def _message(message_id: str, key: str | None = None) -> MessageRecord:
    return MessageRecord(message_id, "notifications", {"id": message_id}, tenant="t1",
                         idempotency_key=key, type="order.shipped")


async def _rows(engine: AsyncEngine) -> dict[tuple[str, str, str], tuple[str, str | None]]:
    d = deliveries.c
    async with engine.connect() as conn:
        rows = (await conn.execute(select(d.message_id, d.channel, d.recipient, d.state,
                                          d.claim_token))).all()
    return {(r.message_id, r.channel, r.recipient): (r.state, r.claim_token) for r in rows}


@pytest.fixture
async def writer(direct: DirectPool) -> Any:
    writer = LedgerWriter(direct)
    yield writer
    await writer.aclose()


async def test_the_legs_of_a_new_message_are_claimed_with_its_key(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    other = ("m1", "push", "device-1")
    found = await writer.claim_idempotency_keys(
        [_message("m1", "k1")], [Intent(*LEG, "t-1"), Intent(*other, "t-1")])

    assert found.claimed == {LEG, other}
    assert await _rows(engine) == {LEG: ("sending", "t-1"), other: ("sending", "t-1")}


async def test_a_message_written_before_claims_no_leg_with_its_key(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await writer.claim_idempotency_keys([_message("m1", "k1")], [Intent(*LEG, "t-1")])

    redelivered = await writer.claim_idempotency_keys([_message("m1", "k1")],
                                                      [Intent(*LEG, "t-2")])
    duplicate = await writer.claim_idempotency_keys([_message("m2", "k1")],
                                                    [Intent("m2", "sms", "+1415", "t-3")])

    assert redelivered.claimed == set(), "its legs may be sent already: the send claims them"
    assert (duplicate.duplicates, duplicate.claimed) == ({"m2"}, set())
    assert await _rows(engine) == {LEG: ("sending", "t-1")}


async def test_a_held_leg_is_handed_out_once_without_a_statement(direct: DirectPool) -> None:
    intents = Intents(direct)
    token = intents.foresee([LEG])[LEG]
    intents.hold([LEG], time.monotonic())
    intents._direct = Unreachable()  # a statement would fail

    assert (await intents.claim([LEG]))[LEG] == (CLAIMED, None, token)
    with pytest.raises(ConnectionRefusedError):
        await intents.claim([LEG])  # not held any more: the database is asked


async def test_a_held_leg_whose_hold_ran_out_is_claimed_by_its_token(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    intents = Intents(direct, stale_after_s=0)  # no hold is trusted
    tokens = intents.foresee([LEG])
    found = await writer.claim_idempotency_keys([_message("m1")], [Intent(*LEG, tokens[LEG])])
    intents.hold(found.claimed, time.monotonic())

    claim = (await intents.claim([LEG]))[LEG]

    assert (claim.state, claim.token) == (CLAIMED, tokens[LEG]), "asked, and found ours"


async def test_a_key_claim_whose_reply_is_lost_leaves_its_legs_claimable_by_their_token(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    intents = Intents(direct)
    tokens = intents.foresee([LEG])
    lost = LedgerWriter(LostReplies(direct), retries=0)
    with pytest.raises(LedgerError):
        await lost.claim_idempotency_keys([_message("m1")], [Intent(*LEG, tokens[LEG])])
    assert await _rows(engine) == {LEG: ("sending", tokens[LEG])}, "it landed"

    claim = (await intents.claim([LEG]))[LEG]  # the redelivery's, by the same worker

    assert claim.state == CLAIMED, "not taken for another worker's send in progress"


async def test_a_foreseen_leg_keeps_the_token_a_lost_claim_left_on_it(
    direct: DirectPool
) -> None:
    intents = Intents(direct)
    first = intents.foresee([LEG])
    again = intents.foresee([LEG, ("m1", "push", "device-1")])

    assert again[LEG] == first[LEG]


async def test_legs_held_and_never_sent_are_released(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    intents = Intents(direct)
    tokens = intents.foresee([LEG])
    since = time.monotonic()
    intents.hold((await writer.claim_idempotency_keys(
        [_message("m1")], [Intent(*LEG, tokens[LEG])])).claimed, since)

    await intents.release_unsent([LEG])

    assert await _rows(engine) == {LEG: ("failed", None)}
    assert await intents.give_back() == 0, "nothing left to give back"


async def test_a_forgotten_leg_is_neither_held_nor_given_back(direct: DirectPool) -> None:
    intents = Intents(direct)
    intents.foresee([LEG])
    intents.hold([LEG], time.monotonic())

    intents.forget([LEG])

    assert await intents.give_back() == 0


# -- through the intake steps (the reviews of this change found each of these) ---------------


class Counting:
    """A provider (SMS unless told) that accepts everything and counts its calls per
    address."""

    name = "counting"

    def __init__(self, channel: Channel = "sms") -> None:
        self.channel = channel
        self.calls: Counter[str] = Counter()

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls[delivery.address] += 1
        return SendResult(self.name, self.channel, delivery.address, delivery.idempotency_key,
                          0.0, 1.0, provider_message_id="pm")

    async def aclose(self) -> None:
        return None


def _intake(message_id: str, recipient: Recipient | None = None) -> Item:
    recipient = recipient or Recipient(user_id="u1", phone=PHONE)
    channels: list[Channel] = ["sms"] if recipient.phone else ["push"]
    n = Notification(type="order.shipped", channels=channels, content=Content(body="hi"),
                     recipient=recipient)
    envelope = Envelope(id=message_id, key="u1", created_ms=now_ms())
    return Item(Message(n, envelope, "0-1", 0), n, "u1", Priority.NORMAL)


def _pipeline(
    providers: dict[Channel, Provider], inline: frozenset[Channel] = frozenset({"sms"})
) -> NotificationPipeline:
    async def built(_app: object) -> dict[Channel, Provider]:
        return providers

    return NotificationPipeline(App(f"early-{uuid.uuid4().hex[:6]}"), providers=built,
                                inline=inline)


def _settings(database_url: str, schema_name: str, **more: Any) -> Settings:
    return Settings(namespace=f"early-{uuid.uuid4().hex[:8]}", block_ms=50,
                    database_url=database_url, database_schema=schema_name, **more)


async def _intake_steps(pipeline: NotificationPipeline, items: list[Item]) -> list[Item]:
    for step in (pipeline.accept, pipeline.route, pipeline.render, pipeline.deliver_inline):
        items = await step([i for i in items if not i.done]) + [i for i in items if i.done]
    await pipeline.services.ledger.flush()
    return items


async def test_a_worker_stopping_while_its_key_claim_is_in_flight_leaves_no_leg_sending(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # The key claim waits on a lock (another session's uncommitted insert of the same id,
    # rolled back once the worker is stopping); the shutdown deadline cancels accept. The
    # claim goes on, coalesced, and lands after that: its leg must not stay 'sending'.
    pipeline = _pipeline({"sms": Counting()})
    async with engine.connect() as locker:
        await locker.execute(text(
            "INSERT INTO messages (id, topic, payload) VALUES ('m1', 'x', '{}')"))
        async with running(pipeline.app, _settings(database_url, schema_name), database=True):
            intents = pipeline.services.sender.intents
            accepting = asyncio.create_task(pipeline.accept([_intake("m1")]))
            await asyncio.sleep(0.3)
            accepting.cancel()  # the shutdown deadline

            async def unlock() -> None:
                await asyncio.sleep(0.5)
                await locker.rollback()

            unlocking = asyncio.create_task(unlock())
            await asyncio.gather(accepting, return_exceptions=True)
        await unlocking

    assert intents._unsure == {}, "the worker remembers nothing"
    rows = await _rows(engine)
    assert rows.get(LEG, ("none", None))[0] != "sending", rows


async def test_a_batch_broken_after_its_key_claim_leaves_its_legs_to_any_worker(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # Worker A's key claim lands (claiming the leg) but its preference read fails; the
    # message then goes to worker B (a moved partition, say). B must send the leg, not find
    # it 'sending' and take it for an outcome unknown.
    a_calls, b_calls = Counting(), Counting()
    a, b = _pipeline({"sms": a_calls}), _pipeline({"sms": b_calls})
    settings = _settings(database_url, schema_name, claim_idle_ms=200)
    async with running(a.app, settings, database=True):
        async def broken(_keys: Any) -> Any:
            await asyncio.sleep(0.05)
            raise ConnectionResetError("connection lost")

        a.services.lookup.get_pairs = broken  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError):
            await a.accept([_intake("m1")])
        async with running(b.app, settings, database=True):
            await asyncio.sleep(0.3)  # a 'sending' row is stale by now
            await _intake_steps(b, [_intake("m1")])

    assert a_calls.calls + b_calls.calls == Counter({PHONE: 1}), await _rows(engine)
    assert (await _rows(engine))[LEG][0] == "sent"


async def test_an_inline_channel_without_a_provider_claims_no_leg(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # The sender records such a leg as not sendable, on a row addressed by the user id; a
    # leg claimed with its message would be left behind, unfinished.
    pipeline = _pipeline({})
    async with running(pipeline.app, _settings(database_url, schema_name), database=True):
        items = await _intake_steps(pipeline, [_intake("m1")])
        await pipeline.deliver([i for i in items if i.output == "sms"])  # its channel stage
        await pipeline.services.ledger.flush()

    rows = await _rows(engine)
    assert LEG not in rows
    assert rows[("m1", "sms", "u1")][0] == "dead"


async def test_a_render_that_breaks_gives_back_the_legs_claimed_with_its_batch(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    pipeline = _pipeline({"sms": Counting()})
    async with running(pipeline.app, _settings(database_url, schema_name), database=True):
        async def broken(*_args: Any) -> Any:
            raise ConnectionResetError("the template store went away")

        pipeline.services.renderer.render = broken  # type: ignore[method-assign]
        items = await pipeline.route(await pipeline.accept([_intake("m1")]))
        with pytest.raises(ConnectionResetError):
            await pipeline.render(items)

        # (before the worker stops, which would give them back anyway)
        assert (await _rows(engine))[LEG][0] == "failed", "claimable by whoever gets it next"
        assert pipeline.services.sender.intents._unsure == {}


def _push_intake(message_id: str) -> Item:
    n = Notification(type="order.shipped", channels=["push"], content=Content(body="hi"),
                     recipient=Recipient(user_id="u1", device_tokens=("dev-1", "dev-2")))
    envelope = Envelope(id=message_id, key="u1", created_ms=now_ms())
    return Item(Message(n, envelope, "0-1", 0), n, "u1", Priority.NORMAL)


class Pushing(Counting):
    name, channel = "pushing", "push"


async def test_a_record_that_raises_midway_leaves_the_legs_after_it_remembered(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # Both of a push's legs are denied by a rule; the first one's record raises (an earlier
    # flush's dropped rows are reported then): the second is neither recorded nor forgotten.
    async def built(_app: object) -> dict[Channel, Provider]:
        return {"push": Pushing()}

    pipeline = NotificationPipeline(App("early-denied"), providers=built, inline={"push"},
                                    rules=[Rule("order.*", deny=("push",))])
    async with running(pipeline.app, _settings(database_url, schema_name), database=True):
        ledger, intents = pipeline.services.ledger, pipeline.services.sender.intents
        items = await pipeline.accept([_push_intake("m1")])
        ledger._failure = LedgerError("an earlier flush dropped rows", rows=1, retained=False)
        with pytest.raises(LedgerError):
            await pipeline.route(items)

        # Given back by route, as the batch broke: the next owner claims it.
        assert (await _rows(engine))[("m1", "push", "dev-2")][0] == "failed"
        assert intents._unsure == {}


async def test_a_stopping_worker_cancels_a_key_claim_held_up_by_a_lock(
    engine: AsyncEngine, database_url: str, schema_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table lock (a migration, a CREATE INDEX) holds the claim; the batch was cancelled at
    # its deadline. The stop waits a while for the claim, then cancels it (rolled back).
    monkeypatch.setattr(notifications, "CLAIMS_AT_STOP_S", 0.5)
    pipeline = _pipeline({"sms": Counting()})
    async with engine.connect() as locker:
        await locker.execute(text("LOCK TABLE messages IN SHARE MODE"))
        stopped = asyncio.Event()

        async def worker() -> None:
            async with running(pipeline.app, _settings(database_url, schema_name),
                               database=True):
                accepting = asyncio.create_task(pipeline.accept([_intake("m1")]))
                await asyncio.sleep(0.3)
                accepting.cancel()
                await asyncio.gather(accepting, return_exceptions=True)
            stopped.set()

        running_worker = asyncio.create_task(worker())
        try:
            async with asyncio.timeout(5):
                await stopped.wait()
        finally:
            await locker.rollback()
            await running_worker

    assert await _rows(engine) == {}, "the claim was rolled back: no leg claimed"


async def test_the_longest_device_token_a_notification_may_carry_fits_the_ledger(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # The address is in the deliveries' unique index, whose entries PostgreSQL caps at 2704
    # bytes; a longer token (4096 were allowed before) failed the batch's claim statement for
    # every notification in it. Random characters: nothing for the index to compress.
    token = "".join(random.choice(string.printable[:94]) for _ in range(MAX_TOKEN))
    provider = Counting("push")
    pipeline = _pipeline({"push": provider}, inline=frozenset({"push"}))
    async with running(pipeline.app, _settings(database_url, schema_name), database=True):
        await _intake_steps(pipeline, [
            _intake("m1", Recipient(user_id="u1", device_tokens=(token,))),
            _intake("m2", Recipient(user_id="u2", device_tokens=("short",))),
        ])

    assert provider.calls == Counter({token: 1, "short": 1})
    rows = await _rows(engine)
    assert {key[:2]: state for key, (state, _) in rows.items()} == {
        ("m1", "push"): "sent", ("m2", "push"): "sent"}
