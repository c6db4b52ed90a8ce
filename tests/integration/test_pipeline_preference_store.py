"""The preference store against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import time

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.direct import DirectPool
from tidings.migrate import downgrade, upgrade
from tidings.pipelines.preferences import (
    PreferenceLookup,
    Preferences,
    PreferenceStore,
    QuietHours,
)
from tidings.tables import preferences

pytestmark = [pytest.mark.postgres]


ADA = Preferences(
    user_id="ada",
    opted_out=frozenset({"sms", "push"}),
    channel_order=("push", "email"),
    quiet_hours=QuietHours(time(22), time(7, 30)),
    timezone="Europe/Lisbon",
)


async def test_put_then_get_many_round_trips(engine: AsyncEngine) -> None:
    store = PreferenceStore(engine)
    await store.put(ADA)
    await store.put(Preferences(user_id="bob"))

    found = await store.get_many(["ada", "bob", "nobody", "ada"])

    assert found == {"ada": ADA, "bob": Preferences(user_id="bob")}


async def test_put_again_replaces_the_preferences(engine: AsyncEngine) -> None:
    store = PreferenceStore(engine)
    await store.put(ADA)
    await store.put(Preferences(user_id="ada", channel_order=("email",)))

    assert await store.get_many(["ada"]) == {
        "ada": Preferences(user_id="ada", channel_order=("email",))
    }


async def test_tenants_are_kept_apart(engine: AsyncEngine, direct: DirectPool) -> None:
    store = PreferenceStore(engine)
    acme = Preferences(user_id="ada", tenant="acme", opted_out=frozenset({"email"}))
    await store.put(ADA)
    await store.put(acme)

    assert await store.get_many(["ada"], tenant="acme") == {"ada": acme}
    lookup = PreferenceLookup(direct)
    pairs = [("acme", "ada"), ("default", "ada"), ("x", "ada"), ("acme", "ada")]
    assert await lookup.get_pairs(pairs) == {
        ("acme", "ada"): acme,
        ("default", "ada"): ADA,
    }


async def test_lookups_made_together_each_get_their_own_recipients(
    engine: AsyncEngine, direct: DirectPool
) -> None:
    bob = Preferences(user_id="bob", opted_out=frozenset({"sms"}))
    for prefs in (ADA, bob):
        await PreferenceStore(engine).put(prefs)
    lookup = PreferenceLookup(direct)

    # Three lookups at once go out as one statement; each answer holds only what it asked.
    found = await asyncio.gather(lookup.get_pairs([("default", "ada")]),
                                 lookup.get_pairs([("default", "bob"), ("default", "ada")]),
                                 lookup.get_pairs([("default", "nobody")]))

    assert found == [{("default", "ada"): ADA},
                     {("default", "bob"): bob, ("default", "ada"): ADA},
                     {}]


async def test_get_many_of_nobody_asks_nothing(engine: AsyncEngine, direct: DirectPool) -> None:
    assert await PreferenceStore(engine).get_many([]) == {}
    assert await PreferenceLookup(direct).get_pairs([]) == {}


async def test_get_many_reads_a_thousand_users_in_one_query(engine: AsyncEngine) -> None:
    store = PreferenceStore(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(preferences), [
            {"tenant": "default", "user_id": f"u{i}", "opted_out": ["sms"]} for i in range(1000)
        ])

    found = await store.get_many(f"u{i}" for i in range(0, 2000, 2))

    assert len(found) == 500
    assert found["u998"].opted_out == frozenset({"sms"})


@pytest.mark.parametrize(
    ("row", "constraint"),
    [
        ({"opted_out": ["fax"]}, "ck_preferences_opted_out_known"),
        ({"channel_order": ["email", "pager"]}, "ck_preferences_channel_order_known"),
        ({"quiet_start": time(22)}, "ck_preferences_quiet_hours_pair"),
        ({"quiet_start": time(7), "quiet_end": time(7)}, "ck_preferences_quiet_hours_pair"),
    ],
)
async def test_the_database_refuses_preferences_that_cannot_work(
    engine: AsyncEngine, row: dict[str, object], constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint):
        async with engine.begin() as conn:
            await conn.execute(insert(preferences), [{"tenant": "t", "user_id": "u", **row}])


async def test_downgrade_to_0002_removes_only_the_pipeline_tables(
    engine: AsyncEngine, schema_name: str
) -> None:
    async def tables() -> set[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema_name},
            )
            return set(rows.scalars())

    before = await tables()
    assert (await downgrade(engine, schema_name, "0002"))[-1] == "0003"

    after = await tables()
    assert {"templates", "preferences"}.isdisjoint(after)
    assert {"messages", "deliveries", "schedules"} <= after
    assert "0003" in await upgrade(engine, schema_name)
    assert await tables() == before
