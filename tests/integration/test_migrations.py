"""Migrations, tables and the database helpers, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.database import create_engine, ensure_schema, ping, quote_ident
from tidings.errors import ConnectionFailed, MigrationsPending
from tidings.migrate import check_current, current, downgrade, head, revisions, upgrade
from tidings.retry import RetryPolicy
from tidings.tables import consumer_instances, deliveries, messages, metadata
from tidings.tables.consumers import heartbeat, live_instances, mark_stopped, register_group

pytestmark = [pytest.mark.postgres]

HINT = "Check TIDINGS_DATABASE_URL, or unset it to use the embedded server."


def _engine(url: str, schema: str, *, connect_timeout: float = 5) -> AsyncEngine:
    return create_engine(url, schema=schema, pool_size=2, connect_timeout=connect_timeout)


@pytest.fixture
async def engine(database_url: str, schema_name: str) -> AsyncIterator[AsyncEngine]:
    engine = _engine(database_url, schema_name)
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name)} CASCADE"))
    await engine.dispose()


@pytest.fixture
async def migrated(engine: AsyncEngine, schema_name: str) -> AsyncEngine:
    await upgrade(engine, schema_name)
    return engine


async def _tables(engine: AsyncEngine, schema: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
        return set(rows.scalars())


def _message(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": message_id, "topic": "notifications.email", "payload": {}, **fields}


async def _beat(conn: AsyncConnection, group_id: int, instance_id: str = "w-1") -> None:
    await heartbeat(conn, instance_id=instance_id, group_id=group_id, hostname="box", pid=42)


def _delivery(message_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "channel": "email",
        "recipient": "ada@example.com",
        "state": "accepted",
        **fields,
    }


# -- migrating -----------------------------------------------------------------------------


async def test_upgrade_creates_every_table_and_the_default_queues(
    engine: AsyncEngine, schema_name: str
) -> None:
    await upgrade(engine, schema_name)

    assert await _tables(engine, schema_name) == set(metadata.tables) | {"alembic_version"}
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM queue_configs ORDER BY name"))).all()
    assert [(r.name, r.topic, r.channel) for r in rows] == [
        ("email", "notifications.email", "email"),
        ("orchestration", "notifications.orchestration", "orchestration"),
        ("push", "notifications.push", "push"),
        ("sms", "notifications.sms", "sms"),
    ]
    assert {(r.partitions, r.max_deliveries, r.enabled) for r in rows} == {(4, 5, True)}
    policies = [RetryPolicy.from_config(r.retry_policy) for r in rows]  # what workers load
    assert {p.strategy for p in policies} == {"full_jitter"}
    assert {p.max_attempts for p in policies} == {8}


async def test_upgrade_applies_nothing_the_second_time(
    engine: AsyncEngine, schema_name: str
) -> None:
    assert await upgrade(engine, schema_name) == revisions()
    assert await upgrade(engine, schema_name) == []
    assert await current(engine, schema_name) == head()


async def test_downgrade_to_base_removes_the_tables_and_upgrade_works_again(
    migrated: AsyncEngine, schema_name: str
) -> None:
    assert await downgrade(migrated, schema_name, "base") == revisions()[::-1]
    assert await _tables(migrated, schema_name) == {"alembic_version"}
    assert await current(migrated, schema_name) is None

    assert await upgrade(migrated, schema_name) == revisions()
    assert await _tables(migrated, schema_name) == set(metadata.tables) | {"alembic_version"}


async def test_a_schema_name_that_needs_quoting_works(database_url: str, schema_name: str) -> None:
    # Settings accept '-', '.' and capitals in a schema name; each needs quoting in SQL.
    odd = f"{schema_name}-Odd.name"
    engine = _engine(database_url, odd)
    try:
        assert await upgrade(engine, odd) == revisions()
        await check_current(engine, odd)
        assert await _tables(engine, odd) == set(metadata.tables) | {"alembic_version"}
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(odd)} CASCADE"))
        await engine.dispose()


async def test_concurrent_upgrades_both_succeed_and_migrate_once(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    other = _engine(database_url, schema_name)
    try:
        results = await asyncio.gather(upgrade(engine, schema_name), upgrade(other, schema_name))
    finally:
        await other.dispose()

    assert sorted(results) == [[], revisions()]
    assert await current(engine, schema_name) == head()


async def test_upgrade_waits_for_a_migration_running_elsewhere(
    engine: AsyncEngine, database_url: str, schema_name: str
) -> None:
    # Another process holding the lock looks, from here, like another connection holding it.
    holder = _engine(database_url, "public")
    lock = "hashtext('tidings.migrate.' || :s)"
    try:
        async with holder.connect() as conn:
            await conn.execute(text(f"SELECT pg_advisory_lock({lock})"), {"s": schema_name})
            waiting = asyncio.create_task(upgrade(engine, schema_name))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await conn.execute(text(f"SELECT pg_advisory_unlock({lock})"), {"s": schema_name})
            assert await asyncio.wait_for(waiting, 10) == revisions()
    finally:
        await holder.dispose()


async def test_check_current_raises_on_an_empty_schema(
    engine: AsyncEngine, schema_name: str
) -> None:
    with pytest.raises(MigrationsPending) as raised:
        await check_current(engine, schema_name)

    assert str(raised.value) == (
        f"the database schema {schema_name} is at revision none but this tidings needs "
        f"{head()}: run `tidings migrate`"
    )


async def test_check_current_passes_after_upgrade(migrated: AsyncEngine, schema_name: str) -> None:
    await check_current(migrated, schema_name)


async def test_check_current_says_when_a_newer_tidings_migrated_the_schema(
    migrated: AsyncEngine, schema_name: str
) -> None:
    async with migrated.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(MigrationsPending, match="9999, which this tidings does not know"):
        await check_current(migrated, schema_name)


async def test_tables_match_the_migrations(migrated: AsyncEngine) -> None:
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, kind, _: name != "alembic_version",
                "compare_server_default": True,
            },
        )
        diffs: list[Any] = compare_metadata(context, metadata)
        return diffs

    async with migrated.connect() as conn:
        assert await conn.run_sync(diff) == []


# -- constraints ---------------------------------------------------------------------------


async def test_a_delivery_state_outside_the_known_ones_is_rejected(
    migrated: AsyncEngine,
) -> None:
    async with migrated.begin() as conn:
        await conn.execute(insert(messages), [_message("m1")])

    with pytest.raises(IntegrityError, match="ck_deliveries_state"):
        async with migrated.begin() as conn:
            await conn.execute(insert(deliveries), [_delivery("m1", state="delivered")])


async def test_a_second_delivery_to_the_same_recipient_and_channel_is_rejected(
    migrated: AsyncEngine,
) -> None:
    async with migrated.begin() as conn:
        await conn.execute(insert(messages), [_message("m1")])
        await conn.execute(insert(deliveries), [_delivery("m1"), _delivery("m1", channel="sms")])

    with pytest.raises(IntegrityError, match="uq_deliveries_message_id_channel_recipient"):
        async with migrated.begin() as conn:
            await conn.execute(insert(deliveries), [_delivery("m1", state="sent")])


@pytest.mark.parametrize(
    ("first", "second", "collide"),
    [
        pytest.param(("t1", "k"), ("t1", "k"), True, id="same tenant and key"),
        pytest.param((None, "k"), (None, "k"), True, id="no tenant, same key"),
        pytest.param(("t1", "k"), ("t2", "k"), False, id="other tenant"),
        pytest.param(("t1", None), ("t1", None), False, id="no key"),
    ],
)
async def test_an_idempotency_key_is_unique_per_tenant(
    migrated: AsyncEngine,
    first: tuple[str | None, str | None],
    second: tuple[str | None, str | None],
    collide: bool,
) -> None:
    rows = [
        _message(message_id, tenant=tenant, idempotency_key=key)
        for message_id, (tenant, key) in (("m1", first), ("m2", second))
    ]
    async with migrated.begin() as conn:
        await conn.execute(insert(messages), rows[:1])

    if collide:
        with pytest.raises(IntegrityError, match="uq_messages_tenant_idempotency_key"):
            async with migrated.begin() as conn:
                await conn.execute(insert(messages), rows[1:])
    else:
        async with migrated.begin() as conn:
            await conn.execute(insert(messages), rows[1:])


# -- consumers -----------------------------------------------------------------------------


async def test_register_group_is_idempotent(migrated: AsyncEngine) -> None:
    async with migrated.begin() as conn:
        first = await register_group(conn, "notifications.email", "senders")
        again = await register_group(conn, "notifications.email", "senders")
        other = await register_group(conn, "notifications.sms", "senders")

    assert first == again
    assert other != first


async def test_heartbeat_upsert_moves_last_heartbeat_at(migrated: AsyncEngine) -> None:
    seen = select(consumer_instances.c.last_heartbeat_at, consumer_instances.c.started_at)
    async with migrated.begin() as conn:
        group_id = await register_group(conn, "notifications.email", "senders")
        await _beat(conn, group_id)
        first = (await conn.execute(seen)).one()
    async with migrated.begin() as conn:
        await _beat(conn, group_id)
        second = (await conn.execute(seen)).one()

    assert second.last_heartbeat_at > first.last_heartbeat_at
    assert second.started_at == first.started_at


async def test_live_instances_leaves_out_stopped_and_silent_ones(migrated: AsyncEngine) -> None:
    async with migrated.begin() as conn:
        group_id = await register_group(conn, "notifications.email", "senders")
        for name in ("w-live", "w-stopped", "w-silent"):
            await _beat(conn, group_id, name)
        await mark_stopped(conn, "w-stopped")
        await conn.execute(
            consumer_instances.update()
            .where(consumer_instances.c.id == "w-silent")
            .values(last_heartbeat_at=text("now() - interval '1 minute'"))
        )
        live = await live_instances(conn, within_s=30)

    assert [(i.id, i.topic, i.group, i.state) for i in live] == [
        ("w-live", "notifications.email", "senders", "running")
    ]


async def test_a_stopped_instance_that_beats_again_is_a_new_start(migrated: AsyncEngine) -> None:
    async with migrated.begin() as conn:
        group_id = await register_group(conn, "notifications.email", "senders")
        await _beat(conn, group_id)
        await mark_stopped(conn, "w-1")
    async with migrated.begin() as conn:
        await _beat(conn, group_id)
        [instance] = await live_instances(conn, within_s=30)
        stopped_at = (await conn.execute(select(consumer_instances.c.stopped_at))).scalar_one()

    assert instance.state == "running"
    assert instance.started_at == instance.last_heartbeat_at
    assert stopped_at is None


# -- connecting ----------------------------------------------------------------------------


async def test_ensure_schema_creates_the_schema_once(engine: AsyncEngine, schema_name: str) -> None:
    await ensure_schema(engine, schema_name)
    await ensure_schema(engine, schema_name)

    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema_name}
        )
        assert found.scalar_one() == 1


async def test_ping_reaches_the_server(engine: AsyncEngine) -> None:
    await ping(engine)


async def test_ping_on_an_unreachable_port_fails_quickly_saying_where(schema_name: str) -> None:
    engine = _engine("postgresql://postgres:secret@127.0.0.1:1/test", schema_name)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed) as raised:
            await ping(engine)
    finally:
        await engine.dispose()

    assert time.monotonic() - started < 2
    message = str(raised.value)
    assert message.startswith("cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1/test: ")
    assert message.endswith(f". {HINT}")
    assert "secret" not in message
    assert "\n" not in message


async def test_ping_gives_up_on_a_silent_server_after_the_connect_timeout(
    schema_name: str,
) -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; wait for the client to give up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    engine = _engine(url, schema_name, connect_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed, match="no answer within the connect timeout"):
            await ping(engine)
        elapsed = time.monotonic() - started
        # The abandoned connection must be closed, not leaked.
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        await engine.dispose()
        server.close()
        await server.wait_closed()

    assert elapsed < 3
