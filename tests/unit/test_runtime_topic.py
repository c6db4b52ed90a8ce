"""Keys map to partitions: the same key always to the same partition, in every process."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import App, ConfigurationError, PayloadError, Settings
from tidings.testing import MemoryTransport

keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
counts = st.integers(min_value=1, max_value=1024)


@given(keys, counts)
def test_a_key_lands_on_a_partition_of_the_topic(key: str, partitions: int) -> None:
    assert 0 <= App("a").topic("t", partitions=partitions).partition_for(key) < partitions


@given(keys, counts)
def test_a_key_lands_on_the_same_partition_in_every_app_instance(
    key: str, partitions: int
) -> None:
    first = App("one").topic("t", partitions=partitions)
    second = App("two").topic("t", partitions=partitions)
    assert first.partition_for(key) == second.partition_for(key) == first.partition_for(key)


def test_the_partition_of_a_key_does_not_depend_on_the_interpreter() -> None:
    # crc32, not hash(): PYTHONHASHSEED differs between worker processes.
    assert App("a").topic("t", partitions=8).partition_for("customer-42") == (
        zlib.crc32(b"customer-42") % 8
    )


@given(counts)
def test_a_message_without_a_key_lands_on_some_partition(partitions: int) -> None:
    orders = App("a").topic("t", partitions=partitions)
    assert all(0 <= orders.partition_for(None) < partitions for _ in range(20))


def test_messages_without_a_key_spread_over_the_partitions() -> None:
    orders = App("a").topic("t", partitions=4)
    assert {orders.partition_for(None) for _ in range(400)} == {0, 1, 2, 3}


@pytest.mark.parametrize("name", ["", "a:b", "a{b}", "a b", "line\nbreak"])
def test_a_topic_name_that_would_break_the_keys_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="may not contain"):
        App("a").topic(name)


def test_a_topic_name_too_long_for_the_ledger_s_indexes_is_refused() -> None:
    App("a").topic("t" * 200)
    with pytest.raises(ConfigurationError, match="has 201 characters; a topic name has at most"):
        App("a").topic("t" * 201)


def test_a_topic_declared_twice_is_refused() -> None:
    app = App("a")
    app.topic("orders")
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.topic("orders")


async def test_a_key_that_is_not_valid_text_is_refused_and_nothing_is_sent() -> None:
    # Undecodable bytes on a command line reach Python as lone surrogates.
    app = App("a")
    orders = app.topic("orders", partitions=2)
    store = MemoryTransport()
    await app.start(Settings(namespace="t"), transport=store)
    try:
        with pytest.raises(PayloadError, match=r"^message 1: .*cannot be encoded"):
            await orders.send_many(
                [{"n": 1}, {"n": 2}], key=lambda v: "\udcff" * (v["n"] - 1) + "k"
            )
        assert [s for s in store.streams.values() if s.entries] == []
    finally:
        await app.stop()
