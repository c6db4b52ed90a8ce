"""The envelope's wire format: what goes in comes back out, and a bad header is a PayloadError."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import Envelope, PayloadError, Priority
from tidings.message import (
    HEADER_FIELD,
    MAX_ATTEMPT,
    MAX_ID,
    MAX_MS,
    PAYLOAD_FIELD,
    WIRE_VERSION,
    encode,
    new_id,
)

# Lone surrogates are not text that can travel as UTF-8; everything else, emoji included, is.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
millis = st.integers(min_value=0, max_value=MAX_MS)

envelopes = st.builds(
    Envelope,
    id=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=MAX_ID),
    key=st.none() | texts,
    priority=st.sampled_from(Priority),
    attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT),
    created_ms=millis,
    enqueued_ms=millis,
    trace_id=st.none() | texts,
    headers=st.dictionaries(texts, texts, max_size=5),
)


@given(envelopes)
def test_an_envelope_survives_its_wire_format(envelope: Envelope) -> None:
    assert Envelope.from_json(envelope.to_json()) == envelope


def test_unicode_headers_and_keys_travel_unchanged() -> None:
    envelope = Envelope(id="x", key="клиент-東京", headers={"tenant": "Zürich 🛎️", "ü": "ß"})
    assert Envelope.from_json(envelope.to_json()) == envelope


def test_the_header_carries_the_wire_version() -> None:
    assert orjson.loads(Envelope(id="x").to_json())["v"] == WIRE_VERSION


def test_an_entry_holds_the_header_and_the_payload_unchanged() -> None:
    envelope = Envelope(id="x")
    fields = encode(envelope, b'{"n": 1}')
    assert fields == {HEADER_FIELD: envelope.to_json(), PAYLOAD_FIELD: b'{"n": 1}'}


def test_an_unknown_wire_version_is_refused_with_advice() -> None:
    header = orjson.dumps({**orjson.loads(Envelope(id="x").to_json()), "v": 2})
    with pytest.raises(PayloadError, match=r"envelope version 2 is not known.*upgrade"):
        Envelope.from_json(header)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'"v"', b"{}"])
def test_an_unreadable_header_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="unreadable envelope header"):
        Envelope.from_json(raw)


def test_a_header_missing_a_field_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="incomplete envelope header"):
        Envelope.from_json(b'{"v": 1, "id": "x"}')


@pytest.mark.parametrize("length", [0, MAX_ID + 1, 5_000])
def test_an_id_that_is_empty_or_too_long_for_the_ledger_is_a_payload_error(length: int) -> None:
    header = orjson.dumps({**orjson.loads(Envelope(id="x").to_json()), "id": "é" * length})
    with pytest.raises(PayloadError, match=f"envelope id of {length} characters; an id is 1-64"):
        Envelope.from_json(header)


@pytest.mark.parametrize(
    "change",
    [{"a": 0}, {"a": MAX_ATTEMPT + 1}, {"c": MAX_MS + 1}, {"q": -1},
     {"c": 1_733_300_000_000_000}],  # microseconds, not milliseconds
)
def test_envelope_numbers_out_of_range_are_a_payload_error(change: dict[str, int]) -> None:
    header = orjson.dumps({**orjson.loads(Envelope(id="x").to_json()), **change})
    with pytest.raises(PayloadError, match="envelope numbers out of range"):
        Envelope.from_json(header)


def test_a_header_holding_anything_but_text_is_a_payload_error() -> None:
    nested = "[" * 900 + '"deep"' + "]" * 900  # JSON nested deeper than orjson writes
    for value in (nested, "7", '{"a": "b"}'):
        base = Envelope(id="x").to_json()
        header = base.replace(b'"h":{}', b'"h":{"x":' + value.encode() + b"}")
        assert header != base
        with pytest.raises(PayloadError, match="fields of the wrong type"):
            Envelope.from_json(header)


def test_a_header_that_is_not_text_is_refused_when_the_message_is_made() -> None:
    with pytest.raises(PayloadError, match="message headers map text to text: 'n': 7"):
        Envelope(id="x", headers={"n": 7}).to_json()  # type: ignore[dict-item]


def test_an_id_of_the_longest_length_is_read() -> None:
    assert Envelope.from_json(Envelope(id="é" * MAX_ID).to_json()).id == "é" * MAX_ID


def test_an_unknown_priority_is_a_payload_error() -> None:
    header = orjson.dumps({**orjson.loads(Envelope(id="x").to_json()), "p": "urgent"})
    with pytest.raises(PayloadError, match="incomplete envelope header"):
        Envelope.from_json(header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)


fields = st.sampled_from(["v", "id", "k", "p", "a", "c", "q", "t", "h"])


@given(st.booleans(), st.dictionaries(fields, json_values), st.sets(fields))
def test_any_json_object_is_read_or_refused_with_a_payload_error(
    current: bool, changes: dict[str, object], dropped: set[str]
) -> None:
    header = orjson.loads(Envelope(id="x").to_json()) if current else {}
    header.update(changes)
    for name in dropped:
        header.pop(name, None)
    with contextlib.suppress(PayloadError):
        Envelope.from_json(orjson.dumps(header))


def test_new_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    "envelope",
    [Envelope(id="x", key="\udcff"), Envelope(id="x", headers={"h": "\ud800"}),
     Envelope(id="x", trace_id="\ud800")],
    ids=["key", "header", "trace-id"],
)
def test_text_that_cannot_be_encoded_is_a_payload_error(envelope: Envelope) -> None:
    with pytest.raises(PayloadError, match="key, headers or trace id cannot be encoded"):
        envelope.to_json()
