"""The batched ledger writer and the idempotency claim against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from faulty_pools import lose_the_reply
from tidings.direct import DirectPool
from tidings.notification import Notification
from tidings.pipelines.intents import BUSY, CLAIMED, Claim, Intents
from tidings.pipelines.ledger import Accepted, LedgerError, LedgerWriter, MessageRecord
from tidings.tables import deliveries, messages

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def writer(engine: AsyncEngine, direct: DirectPool) -> AsyncIterator[LedgerWriter]:
    writer = LedgerWriter(direct, max_batch=500, max_delay_ms=20)
    yield writer
    await writer.aclose()


def _message(message_id: str, key: str | None = None, tenant: str | None = "t1",
             **fields: Any) -> MessageRecord:
    return MessageRecord(message_id, "notifications", {"id": message_id}, tenant=tenant,
                         idempotency_key=key, type="order.shipped", **fields)


async def _deliveries(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        query = select(deliveries).order_by(deliveries.c.message_id, deliveries.c.recipient)
        return list((await conn.execute(query)).all())


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


# -- writing ---------------------------------------------------------------------------------


async def test_flush_writes_messages_and_deliveries(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await writer.record_message(_message("m1"))
    await writer.record_delivery("m1", "email", "ada@example.com", "accepted")
    await writer.flush()

    [row] = await _deliveries(engine)
    assert (row.message_id, row.channel, row.recipient, row.state, row.attempts) == (
        "m1", "email", "ada@example.com", "accepted", 0
    )
    assert writer.pending == 0


async def test_a_partial_batch_is_written_by_the_timer(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    writer = LedgerWriter(direct, max_delay_ms=20)
    try:
        await writer.record_message(_message("m1"))
        await writer.record_delivery("m1", "sms", "+14155550123", "accepted")
        assert writer.pending == 2
        for _ in range(100):
            if await _count(engine, "deliveries") == 1:
                break
            await asyncio.sleep(0.01)
        assert await _count(engine, "deliveries") == 1
        assert writer.pending == 0
    finally:
        await writer.aclose()


async def test_a_full_batch_is_written_before_record_returns(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    writer = LedgerWriter(direct, max_batch=10, max_delay_ms=60_000)
    try:
        await writer.record_message(_message("m1"))
        for i in range(9):
            await writer.record_delivery("m1", "push", f"token-{i}", "accepted")

        assert await _count(engine, "deliveries") == 9
    finally:
        await writer.aclose()


async def test_aclose_flushes_and_then_refuses_rows(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    writer = LedgerWriter(direct, max_delay_ms=60_000)
    await writer.record_message(_message("m1"))
    await writer.aclose()

    assert await _count(engine, "messages") == 1
    with pytest.raises(LedgerError, match="closed"):
        await writer.record_message(_message("m2"))


async def test_a_message_recorded_twice_is_written_once(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await writer.record_message(_message("m1", key="k"))
    await writer.flush()
    await writer.record_message(_message("m1", key="k"))
    await writer.record_message(_message("m2", key="k"))  # same key: also left alone
    await writer.flush()

    assert await _count(engine, "messages") == 1


# -- state transitions -----------------------------------------------------------------------

HISTORY: list[tuple[str, dict[str, Any]]] = [
    ("accepted", {}),
    ("failed", {"provider": "smtp", "error": "421 try later"}),
    ("failed", {"provider": "smtp", "error": "timeout"}),
    ("sent", {"provider": "smtp", "provider_message_id": "<abc@mx>"}),
    ("failed", {"error": "late duplicate"}),  # after sent: ignored
    ("accepted", {}),  # a redelivery: ignored
]


@pytest.mark.parametrize("flush_each", [True, False], ids=["flush each", "one batch"])
async def test_a_delivery_moves_forward_and_counts_its_attempts(
    engine: AsyncEngine, writer: LedgerWriter, flush_each: bool
) -> None:
    await writer.record_message(_message("m1"))
    for state, fields in HISTORY:
        await writer.record_delivery("m1", "email", "ada@example.com", state, **fields)
        if flush_each:
            await writer.flush()
    await writer.flush()

    [row] = await _deliveries(engine)
    assert (row.state, row.attempts, row.provider, row.provider_message_id, row.last_error) == (
        "sent", 3, "smtp", "<abc@mx>", "timeout"
    )
    assert row.sent_at is not None
    assert row.sent_at >= row.created_at


@pytest.mark.parametrize(
    ("states", "final"),
    [
        (["accepted", "delayed", "accepted"], "delayed"),
        (["accepted", "filtered", "sent"], "filtered"),
        (["failed", "dead", "sent"], "dead"),
        (["delayed", "sent"], "sent"),
    ],
)
async def test_a_final_state_is_never_left_and_accepted_never_overwrites(
    engine: AsyncEngine, writer: LedgerWriter, states: list[Any], final: str
) -> None:
    await writer.record_message(_message("m1"))
    for state in states:
        await writer.record_delivery("m1", "sms", "+14155550123", state)
        await writer.flush()

    [row] = await _deliveries(engine)
    assert row.state == final


async def test_merging_in_memory_gives_what_upserting_one_by_one_gives(
    engine: AsyncEngine, direct: DirectPool, writer: LedgerWriter
) -> None:
    # The in-batch merge must mirror the SQL upsert exactly: 200 random histories, each
    # written once flushed after every record and once as a single batch.
    rng = random.Random(7)
    states: list[Any] = ["accepted", "delayed", "failed", "sent", "filtered", "dead"]
    histories = [[rng.choice(states) for _ in range(rng.randint(1, 6))] for _ in range(200)]
    await writer.record_message(_message("m1"))
    await writer.flush()
    batched = LedgerWriter(direct, max_batch=10_000, max_delay_ms=60_000)
    for i, history in enumerate(histories):
        for step, state in enumerate(history):
            fields = {"provider": f"p{step}" if rng.random() < 0.5 else None,
                      "error": f"e{step}" if state == "failed" else None}
            await writer.record_delivery("m1", "email", f"each-{i}", state, **fields)
            await writer.flush()
            await batched.record_delivery("m1", "email", f"once-{i}", state, **fields)
    assert batched.pending == len(histories)
    await batched.aclose()

    rows = {row.recipient: row for row in await _deliveries(engine)}
    for i in range(len(histories)):
        each, once = rows[f"each-{i}"], rows[f"once-{i}"]
        assert (each.state, each.attempts, each.provider, each.last_error) == (
            once.state, once.attempts, once.provider, once.last_error
        ), histories[i]


# -- idempotency -----------------------------------------------------------------------------


async def test_the_same_key_published_twice_is_claimed_once(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    assert (await writer.claim_idempotency_keys([_message("m1", "order-7")])).duplicates == set()
    assert (await writer.claim_idempotency_keys([_message("m2", "order-7")])).duplicates == {"m2"}
    assert await _count(engine, "messages") == 1


async def test_a_key_twice_in_one_batch_keeps_the_first(writer: LedgerWriter) -> None:
    batch = [_message("m1", "k"), _message("m2", "k"), _message("m3", "other")]

    assert (await writer.claim_idempotency_keys(batch)).duplicates == {"m2"}


async def test_a_redelivered_message_is_not_its_own_duplicate(writer: LedgerWriter) -> None:
    await writer.claim_idempotency_keys([_message("m1", "k")])

    assert (await writer.claim_idempotency_keys([_message("m1", "k")])).duplicates == set()


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        pytest.param(("t1", "k"), ("t2", "k"), False, id="other tenant"),
        pytest.param((None, "k"), ("", "k"), True, id="no tenant is the empty tenant"),
        pytest.param(("t1", None), ("t1", None), False, id="no key never collides"),
    ],
)
async def test_keys_are_per_tenant(
    writer: LedgerWriter,
    first: tuple[str | None, str | None],
    second: tuple[str | None, str | None],
    duplicate: bool,
) -> None:
    await writer.claim_idempotency_keys([_message("m1", first[1], tenant=first[0])])

    found = await writer.claim_idempotency_keys([_message("m2", second[1], tenant=second[0])])

    assert found.duplicates == ({"m2"} if duplicate else set())


async def test_concurrent_claims_of_one_key_let_exactly_one_through(
    engine: AsyncEngine, direct: DirectPool, database_url: str, schema_name: str
) -> None:
    other = DirectPool(database_url, schema=schema_name, size=2)
    writers = [LedgerWriter(direct), LedgerWriter(other)]
    try:
        results = await asyncio.gather(*(
            w.claim_idempotency_keys([_message(f"w{i}-{j}", f"k{j}") for j in range(50)])
            for i, w in enumerate(writers)
        ))
    finally:
        for w in writers:
            await w.aclose()
        await other.aclose()

    assert len(results[0].duplicates) + len(results[1].duplicates) == 50
    assert await _count(engine, "messages") == 50


async def test_a_notification_is_recorded_with_its_lane_tenant_and_key(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    notification = Notification.model_validate({
        "type": "order.shipped", "recipient": {"user_id": "u1"}, "content": {"body": "x"},
        "priority": "critical", "tenant": "acme", "idempotency_key": "order-7",
    })
    record = MessageRecord.from_notification("m1", "notifications", notification)

    assert (await writer.claim_idempotency_keys([record])).duplicates == set()
    async with engine.connect() as conn:
        row = (await conn.execute(select(messages))).one()
    assert (row.priority, row.type, row.tenant, row.idempotency_key) == (
        "high", "order.shipped", "acme", "order-7"
    )
    assert row.payload["recipient"]["user_id"] == "u1"


async def test_a_claimed_message_takes_deliveries(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await writer.claim_idempotency_keys([_message("m1", "k")])
    await writer.record_delivery("m1", "email", "ada@example.com", "sent", "smtp", "id-1")
    await writer.flush()

    [row] = await _deliveries(engine)
    assert (row.state, row.provider_message_id) == ("sent", "id-1")


# -- failures --------------------------------------------------------------------------------


async def test_a_row_the_database_rejects_is_dropped_and_named_and_the_rest_written(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    await writer.record_message(_message("m1"))
    for i in range(20):
        await writer.record_delivery("m1", "push", f"token-{i}", "sent")
    await writer.record_delivery("no-such-message", "email", "ada@example.com", "sent")

    with pytest.raises(LedgerError) as raised:
        await writer.flush()

    assert str(raised.value).startswith(
        "the database rejected 1 ledger row(s), which are dropped; the rest of the batch was "
        "written: delivery ('no-such-message', 'email', 'ada@example.com'): insert or update "
        'on table "deliveries" violates foreign key constraint'
    )
    assert (raised.value.rows, raised.value.retained) == (1, False)
    assert writer.pending == 0
    assert await _count(engine, "deliveries") == 20


class Proxy:
    """A TCP proxy to PostgreSQL that can be switched off: a database that goes away.

    With ``marker``, the server's reply to the first client message holding those bytes is
    lost (``delay`` None: the connection is cut instead of passing it on) or held back for
    ``delay`` seconds: a reply lost, or late, after the server did the work.
    """

    def __init__(self, port: int, socket_dir: str | None = None, *,
                 marker: bytes | None = None, delay: float | None = None) -> None:
        # The embedded server listens on a unix socket only: forward to it there.
        self.port, self.target, self.socket_dir = 0, port, socket_dir
        self.marker, self.delay = marker, delay
        self.faulted = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.socket_dir is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(
                f"{self.socket_dir}/.s.PGSQL.{self.target}"
            )
        else:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        armed = asyncio.Event()
        pipes = [asyncio.create_task(self._pipe(reader, up_writer, watch=armed)),
                 asyncio.create_task(self._pipe(up_reader, writer, fault=armed))]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    watch: asyncio.Event | None = None,
                    fault: asyncio.Event | None = None) -> None:
        try:
            while data := await reader.read(65536):
                if (watch is not None and self.marker is not None and not self.faulted
                        and self.marker in data):
                    self.faulted = True
                    watch.set()
                if fault is not None and fault.is_set():
                    fault.clear()
                    if self.delay is None:
                        writer.transport.abort()  # the reply never arrives
                        return
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def _history(engine: AsyncEngine) -> tuple[int, list[tuple[str, int | None]]]:
    async with engine.connect() as conn:
        [row] = (await conn.execute(select(deliveries))).all()
        events = (await conn.execute(text(
            "SELECT state, attempt FROM delivery_events ORDER BY id"))).all()
    return row.attempts, [(e.state, e.attempt) for e in events]


@pytest.mark.parametrize("delay", [None, 0.5], ids=["reply lost", "cancelled while waiting"])
async def test_a_flush_the_server_did_but_never_answered_is_written_once(
    engine: AsyncEngine, schema_name: str, delay: float | None
) -> None:
    socket_dir = engine.url.query.get("host")
    proxy = Proxy(engine.url.port or 5432, socket_dir if isinstance(socket_dir, str) else None,
                  marker=b'"batch_attempts"', delay=delay)  # only the flush's rows say this
    await proxy.start()
    url = f"postgresql://{engine.url.username}@127.0.0.1:{proxy.port}/{engine.url.database}"
    direct = DirectPool(url, schema=schema_name, size=2, connect_timeout=2)
    writer = LedgerWriter(direct, retries=2, retry_delay_s=0.01, max_delay_ms=60_000)
    try:
        await writer.record_message(_message("m1"))
        await writer.record_delivery("m1", "email", "ada@example.com", "failed", error="421")
        if delay is None:
            await writer.flush()  # the reply is lost: tried again on a new connection
        else:
            flush = asyncio.create_task(writer.flush())
            await asyncio.sleep(delay / 2)  # the server has done the statement by now
            flush.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flush
        await writer.aclose()  # what is still buffered is written
    finally:
        await direct.aclose()
        await proxy.stop()

    assert proxy.faulted
    assert await _history(engine) == (1, [("failed", 1)])


async def test_rows_kept_while_the_database_is_away_are_written_when_it_is_back(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    port = engine.url.port or 5432
    socket_dir = engine.url.query.get("host")
    proxy = Proxy(port, socket_dir if isinstance(socket_dir, str) else None)
    await proxy.start()
    url = f"postgresql://{engine.url.username}@127.0.0.1:{proxy.port}/{engine.url.database}"
    proxied = DirectPool(url, schema=schema_name, size=1, connect_timeout=1)
    writer = LedgerWriter(proxied, retries=1, retry_delay_s=0.01, max_delay_ms=60_000)
    try:
        await writer.record_message(_message("m1"))
        await writer.record_delivery("m1", "email", "ada@example.com", "failed", error="421")
        await writer.flush()
        await proxy.stop()
        await writer.record_delivery("m1", "email", "ada@example.com", "failed", error="421")
        await writer.record_delivery("m1", "email", "ada@example.com", "sent", "smtp", "id-1")

        with pytest.raises(LedgerError, match="after 2 tries; they stay buffered") as raised:
            await writer.flush()
        assert (raised.value.rows, raised.value.retained, writer.pending) == (1, True, 1)

        await proxy.start()  # same port: the database is back
        await writer.aclose()
    finally:
        await proxy.stop()
        await proxied.aclose()

    [row] = await _deliveries(engine)
    assert (row.state, row.attempts, row.provider_message_id) == ("sent", 3, "id-1")


def _unreachable(schema_name: str) -> DirectPool:
    return DirectPool("postgresql://postgres@127.0.0.1:1/test", schema=schema_name, size=1,
                      connect_timeout=1)


async def test_an_unreachable_database_keeps_the_rows_and_says_so(schema_name: str) -> None:
    direct = _unreachable(schema_name)
    writer = LedgerWriter(direct, retries=2, retry_delay_s=0.01, max_delay_ms=60_000)
    try:
        await writer.record_message(_message("m1"))
        await writer.record_delivery("m1", "email", "ada@example.com", "accepted")

        with pytest.raises(LedgerError, match="after 3 tries; they stay buffered") as raised:
            await writer.flush()

        assert (raised.value.rows, raised.value.retained) == (2, True)
        assert writer.pending == 2
    finally:
        await direct.aclose()


async def test_a_claim_that_cannot_reach_the_database_raises(schema_name: str) -> None:
    direct = _unreachable(schema_name)
    writer = LedgerWriter(direct, retries=1, retry_delay_s=0.01)
    try:
        with pytest.raises(LedgerError, match="could not claim the idempotency keys of 1"):
            await writer.claim_idempotency_keys([_message("m1", "k")])
    finally:
        await direct.aclose()


async def test_rows_a_failed_timer_flush_kept_are_not_refused_but_flushed_again(
    schema_name: str,
) -> None:
    direct = _unreachable(schema_name)
    writer = LedgerWriter(direct, retries=0, max_delay_ms=1)
    try:
        await writer.record_message(_message("m1"))
        for _ in range(200):  # until the timer flush has run (and failed)
            await asyncio.sleep(0.01)
            if writer._timer is None and not writer._tasks:
                break

        await writer.record_message(_message("m2"))  # nothing was lost: nothing to refuse
        assert writer.pending == 2
        with pytest.raises(LedgerError, match="stay buffered"):
            await writer.flush()  # the next flush tries them again, and says it failed
        assert writer.pending == 2
    finally:
        await direct.aclose()


# -- throughput (D7) -------------------------------------------------------------------------


async def test_batched_writes_are_many_times_faster_than_one_insert_per_row(
    engine: AsyncEngine, direct: DirectPool,
) -> None:
    rows = 20_000
    async with engine.begin() as conn:
        await conn.execute(insert(messages), [
            {"id": f"m{i}", "topic": "t", "payload": {}} for i in range(rows)
        ])

    single_rows = 1000
    started = time.perf_counter()
    async with engine.connect() as conn:
        for i in range(single_rows):  # one INSERT and one commit per row, on one connection
            stmt = pg_insert(deliveries).values(
                message_id=f"m{i}", channel="email", recipient="single", state="sent"
            )
            await conn.execute(stmt.on_conflict_do_nothing())
            await conn.commit()
    single = single_rows / (time.perf_counter() - started)

    writer = LedgerWriter(direct, max_batch=500, max_delay_ms=20)
    started = time.perf_counter()
    for i in range(rows):
        await writer.record_delivery(f"m{i}", "email", "batched", "sent", "smtp", f"p{i}")
    await writer.aclose()
    batched = rows / (time.perf_counter() - started)

    assert await _count(engine, "deliveries") == single_rows + rows
    print(f"\nledger rows/s: one INSERT per row {single:,.0f}, LedgerWriter {batched:,.0f} "
          f"(x{batched / single:.1f})")
    assert batched > 3 * single


async def test_each_flush_deletes_the_ids_of_those_known_to_have_landed(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    for i in range(3):
        await writer.record_message(_message(f"m{i}"))
        await writer.flush()

    assert await _count(engine, "messages") == 3
    assert await _count(engine, "ledger_flushes") == 1, "only the last flush's id is left"


async def test_idempotency_claims_made_together_keep_the_first_use_of_a_key(
    writer: LedgerWriter
) -> None:
    # Made at once, the three claims go out as one statement, in the order they came.
    found = await asyncio.gather(
        writer.claim_idempotency_keys([_message("m1", key="k")]),
        writer.claim_idempotency_keys([_message("m2", key="k"), _message("m3", key="j")]),
        writer.claim_idempotency_keys([_message("m4", key="j")]),
    )

    assert [f.duplicates for f in found] == [set(), {"m2"}, {"m4"}]


async def test_a_leg_claimed_by_three_at_once_is_claimed_for_one_only(
    writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1"), _message("m2")])
    intents = Intents(direct)
    leg, other = ("m1", "email", "a@example.com"), ("m2", "sms", "+14155550100")

    found = await asyncio.gather(
        intents.claim([leg]), intents.claim([other, leg]), intents.claim([leg]))

    assert sorted(claims[leg].state for claims in found) == [BUSY, BUSY, CLAIMED]
    assert found[1][other].state == CLAIMED
    assert await intents.claim([leg]) == {leg: Claim(BUSY, None)}, "it is 'sending' now"


async def test_a_batch_the_database_refuses_fails_only_its_own_claim(
    writer: LedgerWriter
) -> None:
    # jsonb refuses a NUL character, which JSON (and the notification contract) allows.
    refused = MessageRecord("bad", "notifications", {"text": "a\u0000b"}, tenant="t1",
                            idempotency_key="bad", type="order.shipped")

    found = await asyncio.gather(
        writer.claim_idempotency_keys([_message("m1", key="k1")]),
        writer.claim_idempotency_keys([refused]),
        writer.claim_idempotency_keys([_message("m2", key="k1"), _message("m3", key="k3")]),
        return_exceptions=True)

    assert found[0] == Accepted(set(), set())
    assert isinstance(found[1], LedgerError)
    assert found[2] == Accepted({"m2"}, set())


async def test_a_claim_whose_caller_is_cancelled_in_flight_leaves_no_leg_sending(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    # The sender is cancelled (the shutdown deadline) while its claim waits on a row lock. If
    # the claim still landed, its leg would stay 'sending' with nobody to send it, and look
    # like an outcome unknown later (a merged claim did that; see tidings.coalesce).
    await writer.claim_idempotency_keys([_message("m1")])
    async with engine.begin() as conn:
        await conn.execute(insert(deliveries).values(
            message_id="m1", channel="email", recipient="a@example.com", state="failed"))
    intents = Intents(direct)
    leg = ("m1", "email", "a@example.com")
    async with engine.connect() as locker:
        await locker.execute(text("SELECT 1 FROM deliveries WHERE message_id = 'm1' FOR UPDATE"))
        claim = asyncio.create_task(intents.claim([leg]))
        await asyncio.sleep(0.3)
        claim.cancel()
        await asyncio.gather(claim, return_exceptions=True)
        await locker.rollback()
    await asyncio.sleep(0.3)

    async with engine.connect() as conn:
        assert (await conn.execute(select(deliveries.c.state))).scalar_one() == "failed"
    assert (await intents.claim([leg]))[leg].state == CLAIMED


async def test_a_claim_whose_reply_was_lost_is_claimed_again_by_its_worker(
    writer: LedgerWriter, direct: DirectPool
) -> None:
    # The lost claim committed: the leg is 'sending', and nobody called its provider.
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    intents = Intents(direct, stale_after_s=0)
    await lose_the_reply(intents, direct, lambda: intents.claim([leg]))

    found = await intents.claim([leg])

    assert found[leg].state == CLAIMED, "its own token makes the 'sending' row its own"
    assert (await intents.claim([leg]))[leg].state == "sending", "a new claim is not it"


async def test_a_leg_whose_claim_reply_was_lost_stays_unknown_to_another_worker(
    writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    lost = Intents(direct, stale_after_s=0)
    await lose_the_reply(lost, direct, lambda: lost.claim([leg]))

    other = Intents(direct, stale_after_s=0)
    assert (await other.claim([leg]))[leg].state == "sending", "it cannot know: unknown"


async def test_a_leg_left_unsure_is_claimed_once_by_two_claims_at_once(
    writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    intents = Intents(direct)
    await lose_the_reply(intents, direct, lambda: intents.claim([leg]))

    found = await asyncio.gather(intents.claim([leg]), intents.claim([leg]))

    assert sorted(claims[leg].state for claims in found) == [BUSY, CLAIMED]


async def test_a_release_that_failed_leaves_the_leg_to_its_worker_and_no_other(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    intents = Intents(direct, stale_after_s=0)
    claim = (await intents.claim([leg]))[leg]
    assert claim.state == CLAIMED
    assert claim.token is not None
    token = claim.token
    await lose_the_reply(intents, direct, lambda: intents.release({leg: token}))

    assert (await Intents(direct, stale_after_s=0).claim([leg]))[leg].state == "sending"
    again = (await intents.claim([leg]))[leg]
    assert again.state == CLAIMED, "known unsent: its worker takes it back"
    assert again.token == claim.token


async def test_a_worker_that_stops_gives_back_the_legs_it_could_not_be_sure_of(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    stopping = Intents(direct, stale_after_s=0)
    await lose_the_reply(stopping, direct, lambda: stopping.claim([leg]))

    assert await stopping.give_back() == 1

    assert (await Intents(direct, stale_after_s=0).claim([leg]))[leg].state == CLAIMED, (
        "the next owner claims it: not an outcome unknown")
    assert await stopping.give_back() == 0, "nothing left to give back"


async def test_a_leg_recorded_out_of_sending_keeps_no_claim_token(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    # Else a worker that remembers the token (its claim's reply was lost) could take back a
    # row that has moved on, e.g. one an older worker, whose claims set no token, is sending.
    await writer.claim_idempotency_keys([_message("m1")])
    leg = ("m1", "email", "a@example.com")
    assert (await Intents(direct).claim([leg]))[leg].token is not None
    await writer.record_delivery("m1", "email", "a@example.com", "accepted")
    await writer.flush()
    async with engine.connect() as conn:
        assert (await conn.execute(select(deliveries.c.claim_token))).scalar_one() is not None

    await writer.record_delivery("m1", "email", "a@example.com", "failed", error="HTTP 503")
    await writer.flush()

    async with engine.connect() as conn:
        assert (await conn.execute(select(deliveries.c.claim_token))).scalar_one() is None


async def test_a_release_gives_back_only_the_legs_its_claim_still_holds(
    engine: AsyncEngine, writer: LedgerWriter, direct: DirectPool
) -> None:
    await writer.claim_idempotency_keys([_message("m1")])
    leg, other = ("m1", "email", "a@example.com"), ("m1", "sms", "+14155550100")
    intents = Intents(direct)
    claims = await intents.claim([leg, other])
    assert claims[leg].token is not None

    await intents.release({leg: claims[leg].token, other: "someone else's token"})

    async with engine.connect() as conn:
        states = dict((await conn.execute(
            select(deliveries.c.channel, deliveries.c.state))).all())
    assert states == {"email": "failed", "sms": "sending"}


async def test_a_connection_left_in_a_broken_state_by_a_restart_drops_no_row(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    # What asyncpg raised for a connection whose session a PostgreSQL restart ended mid-call:
    # taken for the database refusing the row, the row was dropped (a 'sent' leg then stayed
    # 'sending' and was dead-lettered as an outcome unknown).
    class BrokenOnce(DirectPool):
        def __init__(self) -> None:
            self.broken = True

        async def fetch(self, statement: Any, params: Any) -> list[Any]:
            return await direct.fetch(statement, params)

        async def execute(self, statement: Any, params: Any) -> None:
            if self.broken:
                self.broken = False
                raise asyncpg.InternalClientError(
                    "cannot switch to state 12; another operation (2) is in progress")
            await direct.execute(statement, params)

    writer = LedgerWriter(BrokenOnce(), max_delay_ms=10_000)
    await writer.claim_idempotency_keys([_message("m1")])
    await writer.record_delivery("m1", "email", "a@example.com", "sent", provider="smtp")

    await writer.flush()
    await writer.aclose()

    assert [row.state for row in await _deliveries(engine)] == ["sent"]


async def test_a_provider_reply_holding_a_nul_is_stored_not_refused(
    engine: AsyncEngine, writer: LedgerWriter
) -> None:
    # PostgreSQL refuses NUL in text: one such row would have failed the whole flush, other
    # batches' rows with it. What arrives from a provider is made storable instead.
    await writer.claim_idempotency_keys([_message("m1")])
    await writer.record_delivery("m1", "sms", "+14155550100", "failed", provider="twilio",
                                 provider_message_id="SM\x001", error="HTTP 200: <html>\x00")
    await writer.record_delivery("m1", "email", "a@example.com", "sent", provider="smtp")
    await writer.flush()

    async with engine.connect() as conn:
        rows = dict((await conn.execute(
            select(deliveries.c.channel, deliveries.c.last_error))).all())
    assert rows == {"sms": "HTTP 200: <html>\ufffd", "email": None}


class RefusedOnceFor(DirectPool):
    """Passes every statement on, except that the first write holding ``marker`` alone fails
    as a connection refused would (before it reaches the database)."""

    def __init__(self, real: DirectPool, marker: str) -> None:  # not a pool of its own
        self._real, self._marker, self.failed = real, marker, False

    async def fetch(self, statement: Any, params: Any) -> list[Any]:
        return await self._real.fetch(statement, params)

    async def execute(self, statement: Any, params: Any) -> None:
        rows = str(params.get("deliveries", ""))
        if not self.failed and self._marker in rows and rows.count('"message_id"') == 1:
            self.failed = True
            raise ConnectionRefusedError("the database is restarting")
        await self._real.execute(statement, params)


async def test_a_row_refused_before_a_connection_failure_is_still_reported(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    pool = RefusedOnceFor(direct, "rcpt-c")
    writer = LedgerWriter(pool, max_batch=500, max_delay_ms=10, retries=0)
    for message_id in ("m1", "m2"):
        await writer.record_message(MessageRecord(message_id, "t", {}))
    await writer.flush()
    await writer.record_delivery("m1", "email", "rcpt-a", "sent")
    await writer.record_delivery("m1x-missing", "email", "rcpt-b", "sent")  # refused (no message)
    await writer.record_delivery("m2", "email", "rcpt-c", "sent")  # its write fails once
    # The timer's flush: bisected (rows sort by message id), b refused, then c's write fails.
    await asyncio.sleep(0.3)

    with pytest.raises(LedgerError, match="rejected 1 ledger row") as raised:
        await writer.flush()
    await writer.aclose()

    assert pool.failed
    assert raised.value.retained is False
    assert sorted(r.recipient for r in await _deliveries(engine)) == ["rcpt-a", "rcpt-c"]


async def test_text_with_lone_surrogates_from_a_provider_is_stored_not_dropped(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    writer = LedgerWriter(direct, max_batch=500, max_delay_ms=1000)
    await writer.record_message(MessageRecord("m1", "t", {}))
    await writer.record_delivery("m1", "email", "a", "sent", provider_message_id="id-\udcff")
    await writer.record_delivery("m1", "email", "b", "failed", error="550 mailbox \udc80 bad")
    await writer.aclose()

    rows = {r.recipient: r for r in await _deliveries(engine)}
    assert rows["a"].provider_message_id == "id-?"
    assert rows["b"].last_error == "550 mailbox ? bad"
