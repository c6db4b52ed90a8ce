"""The legs of a new message claimed by the statement that claims its idempotency key, against
a real PostgreSQL: claimed only for a message written now, handed out once without a second
statement, and never left 'sending' with nobody to send them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from faulty_pools import LostReplies
from tidings.direct import DirectPool
from tidings.pipelines.intents import CLAIMED, Intents
from tidings.pipelines.ledger import Intent, LedgerError, LedgerWriter, MessageRecord
from tidings.tables import deliveries

pytestmark = [pytest.mark.postgres]

LEG = ("m1", "sms", "+14155550123")


def _message(message_id: str, key: str | None = None) -> MessageRecord:
    return MessageRecord(message_id, "notifications", {"id": message_id}, tenant="t1",
                         idempotency_key=key, type="order.shipped")


async def _rows(engine: AsyncEngine) -> dict[tuple[str, str, str], tuple[str, str | None]]:
    d = deliveries.c
    async with engine.connect() as conn:
        rows = (await conn.execute(select(d.message_id, d.channel, d.recipient, d.state,
                                          d.claim_token))).all()
    return {(r.message_id, r.channel, r.recipient): (r.state, r.claim_token) for r in rows}


class Unreachable(DirectPool):
    """A database that cannot be reached: any statement fails."""

    def __init__(self) -> None:
        pass

    async def fetch(self, statement: Any, params: Any) -> list[Any]:
        raise ConnectionRefusedError("the database is unreachable")

    async def execute(self, statement: Any, params: Any) -> None:
        raise ConnectionRefusedError("the database is unreachable")


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
    intents.hold([LEG])
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
    intents.hold(found.claimed)

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
    intents.hold((await writer.claim_idempotency_keys(
        [_message("m1")], [Intent(*LEG, tokens[LEG])])).claimed)

    await intents.release_held([LEG])

    assert await _rows(engine) == {LEG: ("failed", None)}
    assert await intents.give_back() == 0, "nothing left to give back"


async def test_a_forgotten_leg_is_neither_held_nor_given_back(direct: DirectPool) -> None:
    intents = Intents(direct)
    intents.foresee([LEG])
    intents.hold([LEG])

    intents.forget([LEG])

    assert await intents.give_back() == 0
