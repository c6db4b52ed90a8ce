"""Queue retry policies read from queue_configs on real PostgreSQL (JSONB in, RetryPolicy out)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.database import create_engine, quote_ident
from tidings.errors import ConfigurationError
from tidings.migrate import upgrade
from tidings.retry import RetryPolicy, load_queue_policies
from tidings.tables import queue_configs

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def engine(database_url: str, schema_name: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, schema=schema_name, pool_size=2, connect_timeout=5)
    await upgrade(engine, schema_name)
    async with engine.begin() as conn:
        # Migration 0001 seeds four queues whose retry_policy predates this format.
        await conn.execute(queue_configs.delete())
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name)} CASCADE"))
    await engine.dispose()


async def add_queue(engine: AsyncEngine, name: str, **row: object) -> None:
    values = {"name": name, "topic": f"{name}.topic", "channel": "email", **row}
    async with engine.begin() as conn:
        await conn.execute(insert(queue_configs).values(**values))


async def test_no_queues_give_no_policies(engine: AsyncEngine) -> None:
    assert await load_queue_policies(engine) == {}


async def test_each_enabled_queue_gets_its_policy_by_topic(engine: AsyncEngine) -> None:
    await add_queue(engine, "mail", retry_policy={"strategy": "full_jitter", "base": "500ms",
                                                  "max_delay": "10m", "max_attempts": 7})
    await add_queue(engine, "sms", retry_policy={"strategy": "fixed", "base": 30})

    policies = await load_queue_policies(engine)

    assert policies == {
        "mail.topic": RetryPolicy("full_jitter", base=0.5, max_delay=600, max_attempts=7),
        "sms.topic": RetryPolicy("fixed", base=30),
    }


async def test_a_disabled_queue_is_left_out(engine: AsyncEngine) -> None:
    await add_queue(engine, "paused", enabled=False, retry_policy={"strategy": "nonsense"})

    assert await load_queue_policies(engine) == {}


async def test_an_empty_policy_gives_the_defaults(engine: AsyncEngine) -> None:
    await add_queue(engine, "plain")

    assert await load_queue_policies(engine) == {"plain.topic": RetryPolicy()}


async def test_a_policy_without_max_attempts_takes_the_queues_max_deliveries(
    engine: AsyncEngine,
) -> None:
    await add_queue(engine, "patient", max_deliveries=12, retry_policy={"base": 2})

    assert (await load_queue_policies(engine))["patient.topic"].max_attempts == 12


async def test_a_policys_own_max_attempts_beats_max_deliveries(engine: AsyncEngine) -> None:
    await add_queue(engine, "strict", max_deliveries=12, retry_policy={"max_attempts": 2})

    assert (await load_queue_policies(engine))["strict.topic"].max_attempts == 2


async def test_a_stored_config_reads_back_as_the_same_policy(engine: AsyncEngine) -> None:
    policy = RetryPolicy("decorrelated_jitter", base=0.1, factor=1.7, max_delay=123.456,
                         max_attempts=9, deadline=3600.5, retry_statuses=frozenset({429, 503}))
    await add_queue(engine, "exact", retry_policy=policy.to_config())

    assert (await load_queue_policies(engine))["exact.topic"] == policy


async def test_a_bad_policy_names_its_queue_and_field(engine: AsyncEngine) -> None:
    await add_queue(engine, "good")
    await add_queue(engine, "broken", retry_policy={"max_attempts": 0})

    with pytest.raises(ConfigurationError) as raised:
        await load_queue_policies(engine)

    assert str(raised.value).startswith(
        "queue 'broken' (topic 'broken.topic'): retry_policy.max_attempts: must be a whole number"
    )


async def test_a_policy_that_is_not_an_object_names_its_queue(engine: AsyncEngine) -> None:
    await add_queue(engine, "listy", retry_policy=[1, 2])

    with pytest.raises(ConfigurationError, match=r"queue 'listy' .*must be a JSON object"):
        await load_queue_policies(engine)
