"""Dead-stream entries as table rows: fingerprints, garbage entries, and payload edits."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.dlq.edits import EditError, apply_edits, parse_edit
from tidings.dlq.letters import fingerprint, normalise, row_of
from tidings.message import Envelope, encode


def test_ids_numbers_and_addresses_become_placeholders() -> None:
    message = ("user 7f3a9c2e-1b2c-4d5e-8f90-a1b2c3d4e5f6 (ann@example.org) timed out after"
               " 30.5s on order 0xdeadbeef / 9f86d081884c7d65")
    assert normalise(message) == (
        "user <uuid> (<email>) timed out after <n>s on order <hex> / <hex>"
    )


def test_errors_differing_only_in_ids_share_a_fingerprint() -> None:
    one = fingerprint("sms", "send", "exhausted", "Timeout", "recipient 123 timed out")
    two = fingerprint("sms", "send", "exhausted", "Timeout", "recipient 98765 timed out")
    other = fingerprint("sms", "send", "exhausted", "Timeout", "recipient 1 refused")
    elsewhere = fingerprint("email", "send", "exhausted", "Timeout", "recipient 1 timed out")
    assert one == two
    assert len({one, other, elsewhere}) == 3


def test_an_entry_of_garbage_still_makes_a_row() -> None:
    row = row_of({b"e": b"\xff\x00{", b"dead.reason": b"bad \x00 bytes"}, "t", 2, "dead", "1-0",
                 now_ms=5_000)
    assert row["message_id"] is None
    assert row["kind"] == "invalid"
    assert row["group_name"] == "?"
    assert row["error_message"] == "bad \ufffd bytes"
    assert row["envelope"] == b"\xff\x00{"
    assert row["errors"] == [{"attempt": 1, "at_ms": 5_000, "type": None,
                              "message": "bad \ufffd bytes"}]


def test_an_entry_whose_id_no_index_could_hold_still_makes_a_row() -> None:
    # A foreign producer's id: stored in the envelope's raw bytes, not as the message id (an
    # index entry that large would fail the recorder's insert, and every one after it).
    header = orjson.dumps({**orjson.loads(Envelope(id="x").to_json()), "id": "i" * 5_000})
    row = row_of({b"e": header, b"d": b"{}"}, "t", 2, "dead", "1-0", now_ms=5_000)
    assert row["message_id"] is None
    assert row["envelope"] == header


def test_an_error_history_with_nested_values_still_makes_a_row() -> None:
    # A foreign producer's history: the nesting is left out, not walked (it failed the
    # recorder's insert on every try, and no dead letter after it was recorded).
    nested = "[" * 900 + '"deep"' + "]" * 900  # JSON nested deeper than orjson writes
    history = '[{"attempt": 1, "at_ms": 7, "type": "X", "message": ' + nested + "}]"
    header = Envelope(id="x", headers={"tidings.errors": history}).to_json()
    row = row_of({b"e": header, b"d": b"{}"}, "t", 2, "dead", "1-0", now_ms=5_000)
    assert row["errors"][0] == {"attempt": 1, "at_ms": 7, "type": "X", "message": None}


def test_a_reason_of_half_a_megabyte_is_fingerprinted_at_once() -> None:
    # Its patterns backtrack over long runs of address characters: 40 000 of them took
    # 5.9 s before (2026-12-04), the event loop frozen meanwhile; half a megabyte, minutes.
    reason = "token " + "a.b-c+d" * 70_000 + " rejected"
    started = time.perf_counter()
    assert fingerprint("t", "g", "failed", "E", reason) == fingerprint("t", "g", "failed", "E",
                                                                       reason)
    assert time.perf_counter() - started < 2.0


def test_the_error_history_header_gives_first_and_last_failure() -> None:
    history = [{"attempt": 1, "at_ms": 1_000, "type": "Timeout", "message": "slow"},
               {"attempt": 2, "at_ms": 2_000, "type": "Timeout", "message": "slow"}]
    errors = orjson.dumps(history).decode()
    envelope = Envelope("m-1", attempt=3, headers={"tidings.errors": errors})
    fields = {**encode(envelope, b"{}"), b"dead.kind": b"exhausted", b"dead.at_ms": b"3000",
              b"dead.group": b"send", b"dead.reason": b"slow"}
    row = row_of(fields, "t", 0, "dead", "1-0", now_ms=9_000)
    assert row["attempts"] == 3
    assert row["errors"] == [*history, {"attempt": 3, "at_ms": 3_000, "type": None,
                                        "message": "slow"}]
    assert row["first_failed_at"].timestamp() == 1.0
    assert row["last_failed_at"].timestamp() == 3.0


def test_a_real_failure_time_in_milliseconds_is_kept_whole() -> None:
    at_ms = 1_795_884_125_989  # 2026-11-28: more than an integer column's 31 bits
    fields = {**encode(Envelope("m-1"), b"{}"), b"dead.kind": b"permanent",
              b"dead.at_ms": str(at_ms).encode(), b"dead.group": b"send"}
    row = row_of(fields, "t", 0, "dead", "1-0", now_ms=0)
    assert row["last_failed_at"].timestamp() == at_ms / 1000
    assert row["errors"][-1]["at_ms"] == at_ms


def test_a_kind_from_a_newer_tidings_is_kept_in_the_message() -> None:
    row = row_of({b"dead.kind": b"quarantined", b"dead.reason": b"x"}, "t", 0, "d", "1-0", 1)
    assert (row["kind"], row["error_message"]) == ("invalid", "[quarantined] x")


def test_an_edit_value_is_json_when_it_parses_else_text() -> None:
    assert parse_edit("a.b=42").value == 42
    assert parse_edit('payload.a={"x": [1]}').value == {"x": [1]}
    assert parse_edit("a=u-42").value == "u-42"
    assert parse_edit("a=").value == ""


def test_an_edit_value_with_a_nul_is_refused_and_an_escaped_backslash_is_not() -> None:
    with pytest.raises(EditError, match="NUL character"):
        parse_edit('a="x\\u0000"')
    assert parse_edit('a="\\\\u0000"').value == "\\u0000"


def test_edits_create_missing_keys_and_index_lists() -> None:
    edited = apply_edits(b'{"to": [{"id": "u-1"}]}',
                         [parse_edit("to.0.id=u-2"), parse_edit("meta.note=fixed")])
    assert orjson.loads(edited or b"") == {"to": [{"id": "u-2"}], "meta": {"note": "fixed"}}


def test_no_edits_keep_the_exact_bytes() -> None:
    assert apply_edits(b'{ "a" : 1 }', []) == b'{ "a" : 1 }'


@pytest.mark.parametrize(("payload", "edit", "error"), [
    (b"not json", "a=1", "not JSON"),
    (None, "a=1", "not JSON"),
    (b'{"a": "text"}', "a.b=1", "cannot set 'a.b' inside a str value"),
    (b'{"a": [1]}', "a.3=1", "a.3 is not an index"),
])
def test_edits_that_cannot_apply_say_why(payload: bytes | None, edit: str, error: str) -> None:
    with pytest.raises(EditError, match=error):
        apply_edits(payload, [parse_edit(edit)])


@pytest.mark.parametrize("text", ["noequals", "=1", "a..b=1", "payload.=1"])
def test_a_malformed_edit_is_refused(text: str) -> None:
    with pytest.raises(EditError, match=r"FIELD\.PATH=VALUE"):
        parse_edit(text)


contract = st.sampled_from([b"e", b"d", b"dead.kind", b"dead.reason", b"dead.error_type",
                            b"dead.group", b"dead.deliveries", b"dead.attempts", b"dead.at_ms"])
values = st.one_of(st.binary(max_size=40), st.integers().map(lambda n: str(n).encode()))


@given(st.dictionaries(st.one_of(contract, st.binary(max_size=12)), values, max_size=10))
def test_any_fields_make_a_row(fields: dict[bytes, bytes]) -> None:
    row = row_of(fields, "t", 0, "dead", "1-0", now_ms=1)
    assert 1 <= row["attempts"] < 2**31
    assert 1 <= row["deliveries"] < 2**31
    assert "\x00" not in row["error_message"]


def test_a_letter_s_ledger_message_is_its_header_else_its_dispatch_s_else_its_own_id() -> None:
    from tidings.dlq.replay import _ledger_id

    dispatch = orjson.dumps({"message_id": "m-accepted", "channels": ["sms"]})
    assert _ledger_id(Envelope("e-1", headers={"tidings.message": "m-1"}), dispatch) == "m-1"
    assert _ledger_id(Envelope("e-2"), dispatch) == "m-accepted"  # published by the scheduler
    assert _ledger_id(Envelope("e-3"), b"not json") == "e-3"
