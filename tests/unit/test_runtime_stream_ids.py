"""Stream ids order as (milliseconds, sequence) numbers, never as strings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.transport import min_id, parse_id

stream_ids = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


def raw(ident: tuple[int, int]) -> bytes:
    return f"{ident[0]}-{ident[1]}".encode()


@given(stream_ids)
def test_parse_id_reads_milliseconds_and_sequence(ident: tuple[int, int]) -> None:
    assert parse_id(raw(ident)) == ident


@given(st.lists(stream_ids, min_size=1, max_size=20))
def test_ids_sort_in_numeric_order(idents: list[tuple[int, int]]) -> None:
    assert sorted((raw(i) for i in idents), key=parse_id) == [raw(i) for i in sorted(idents)]


@given(st.lists(stream_ids, min_size=1, max_size=20))
def test_min_id_is_the_numerically_smallest(idents: list[tuple[int, int]]) -> None:
    assert min_id([raw(i) for i in idents]) == raw(min(idents))


def test_a_longer_id_is_later_even_where_the_string_sorts_first() -> None:
    assert min_id([b"10-0", b"9-0"]) == b"9-0"
    assert min_id([b"5-10", b"5-9"]) == b"5-9"


def test_an_id_without_a_sequence_means_sequence_zero() -> None:
    assert parse_id(b"1700000000000") == (1700000000000, 0)
