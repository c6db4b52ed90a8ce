"""The dead-letter filter language: parsing, round trips, errors, SQL and payload matching."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

from tidings.dlq.filters import INT_FIELDS, TEXT_FIELDS, Filter, FilterError, Term, parse


def sql(expression: str) -> str:
    compiled = parse(expression).where().compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


def test_terms_joined_by_and_parse_into_typed_terms() -> None:
    parsed = parse("kind=exhausted and error_type~Timeout AND topic != notifications.sms")
    assert parsed.terms == (
        Term("kind", "=", "exhausted"),
        Term("error_type", "~", "Timeout"),
        Term("topic", "!=", "notifications.sms"),
    )


def test_quoted_values_keep_spaces_quotes_and_the_word_and() -> None:
    parsed = parse("""error="connection reset by \\"peer\\"" and key='a and b'""")
    assert [t.value for t in parsed.terms] == ['connection reset by "peer"', "a and b"]


def test_payload_and_header_paths_are_fields() -> None:
    parsed = parse("payload.recipient.user_id=u-42 and headers.tenant=acme")
    assert [t.field for t in parsed.terms] == ["payload.recipient.user_id", "headers.tenant"]
    assert [t.on_payload for t in parsed.terms] == [True, False]


def test_an_unknown_field_is_named_with_the_fields_there_are() -> None:
    with pytest.raises(FilterError, match=r"unknown field 'colour' at position 1; use one of"):
        parse("colour=red")


def test_a_missing_operator_names_the_position_and_what_was_expected() -> None:
    with pytest.raises(FilterError, match=r"position 6 expected an operator: =, != or ~"):
        parse("kind poison")


def test_a_missing_and_between_terms_is_reported() -> None:
    with pytest.raises(FilterError, match=r"position 13 expected 'and' between terms"):
        parse("kind=poison topic=x")


def test_an_unclosed_quote_is_reported() -> None:
    with pytest.raises(FilterError, match="expected a closing \""):
        parse('error="oops')


def test_a_number_field_refuses_text_and_substring() -> None:
    with pytest.raises(FilterError, match="whole number"):
        parse("attempts=many")
    with pytest.raises(FilterError, match="use = or !="):
        parse("attempts~3")


def test_substring_compiles_to_a_case_insensitive_escaped_like() -> None:
    compiled = sql("error_type~Time%Out").replace("%%", "%")
    assert "lower(dead_letters.error_type) LIKE '%' || 'time/%out' || '%' ESCAPE '/'" in compiled


def test_not_equal_matches_null_columns_too() -> None:
    assert "dead_letters.error_type IS DISTINCT FROM 'X'" in sql("error_type!=X")


def test_headers_compile_to_a_jsonb_text_lookup() -> None:
    assert "(dead_letters.headers ->> 'tenant') = 'acme'" in sql("headers.tenant=acme")


def test_payload_terms_stay_out_of_the_sql() -> None:
    assert "payload" not in sql("kind=poison and payload.user=u-1")


def test_payload_terms_match_nested_fields_lists_and_numbers() -> None:
    payload = b'{"recipient": {"user_id": "u-42", "tags": ["vip"]}, "n": 3}'
    assert parse("payload.recipient.user_id=u-42 and payload.n=3").matches_payload(payload)
    assert parse("payload.recipient.tags.0~VI").matches_payload(payload)
    assert not parse("payload.recipient.user_id=u-43").matches_payload(payload)


def test_a_missing_payload_field_fails_equal_and_passes_not_equal() -> None:
    assert not parse("payload.absent=x").matches_payload(b"{}")
    assert parse("payload.absent!=x").matches_payload(b"{}")


def test_a_payload_that_is_not_json_has_no_fields() -> None:
    assert not parse("payload.a=1").matches_payload(b"\xff not json")
    assert not parse("payload.a=1").matches_payload(None)


# -- properties -------------------------------------------------------------------------------

names = st.sampled_from(sorted(TEXT_FIELDS))
paths = st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,6}", fullmatch=True),
                 min_size=1, max_size=3).map(".".join)
text_terms = st.builds(
    Term,
    st.one_of(names, paths.map("payload.{}".format), paths.map("headers.{}".format)),
    st.sampled_from(["=", "!=", "~"]),
    st.text(max_size=12),
)
int_terms = st.builds(
    Term, st.sampled_from(sorted(INT_FIELDS)), st.sampled_from(["=", "!="]),
    st.integers(-(10**6), 10**6).map(str),
)
filters = st.lists(st.one_of(text_terms, int_terms), min_size=1, max_size=5).map(
    lambda terms: Filter(tuple(terms))
)


@given(filters)
def test_a_rendered_filter_parses_back_to_itself(expression: Filter) -> None:
    assert parse(str(expression)) == expression


@given(st.text(max_size=40))
def test_garbage_raises_nothing_but_a_filter_error(text: str) -> None:
    with contextlib.suppress(FilterError):
        parse(text)


@given(filters, st.integers(0, 60), st.text(max_size=5))
def test_a_mangled_filter_raises_nothing_but_a_filter_error(
    expression: Filter, cut: int, junk: str
) -> None:
    text = str(expression)
    with contextlib.suppress(FilterError):
        parse(text[:cut] + junk + text[cut:])


@pytest.mark.parametrize(("text", "limit"), [
    ("attempts=3000000000", "2,147,483,647"), ("id=99999999999999999999", "9,223,372,036"),
])
def test_a_number_beyond_its_column_is_refused_naming_the_limit(text: str, limit: str) -> None:
    with pytest.raises(FilterError, match=f"at most {limit}"):
        parse(text)
