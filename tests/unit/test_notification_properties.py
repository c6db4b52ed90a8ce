"""Property tests for the contract's validators: E.164, locales, channel lists, time zones,
template data."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.notification import (
    CHANNELS,
    canonical_locale,
    check_channels,
    check_data,
    check_e164,
    check_timezone,
)

e164 = st.builds(
    lambda first, rest: f"+{first}{rest}",
    st.integers(1, 9),
    st.text("0123456789", min_size=1, max_size=14),
)


@given(e164)
def test_every_e164_number_is_accepted(number: str) -> None:
    assert check_e164(number) == number


@given(st.text(max_size=20))
def test_anything_accepted_as_e164_is_plus_then_up_to_15_digits(text: str) -> None:
    try:
        check_e164(text)
    except ValueError:
        return
    assert text[0] == "+"
    assert text[1] != "0"
    assert text[1:].isascii()
    assert text[1:].isdigit()
    assert 2 <= len(text) - 1 <= 15


@given(e164, st.sampled_from([" ", "-", "(", "0", "x"]), st.data())
def test_a_number_with_a_separator_or_leading_zero_is_refused(
    number: str, junk: str, data: st.DataObject
) -> None:
    if junk == "0":
        candidate = "+0" + number[1:]
    else:
        at = data.draw(st.integers(2, len(number)))
        candidate = number[:at] + junk + number[at:]
    with pytest.raises(ValueError, match=r"E\.164"):
        check_e164(candidate)


def test_a_sixteen_digit_number_is_too_long() -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        check_e164("+1" + "2" * 15)


languages = st.from_regex(r"[a-z]{2,3}", fullmatch=True)
scripts = st.from_regex(r"[A-Z][a-z]{3}", fullmatch=True)
regions = st.from_regex(r"[A-Z]{2}|[0-9]{3}", fullmatch=True)
canonical_locales = st.builds(
    lambda lang, script, region: "-".join(p for p in (lang, script, region) if p),
    languages, st.none() | scripts, st.none() | regions,
)


@given(canonical_locales)
def test_a_canonical_locale_is_its_own_canonical_form(locale: str) -> None:
    assert canonical_locale(locale) == locale


@given(canonical_locales, st.sampled_from(["-", "_"]), st.booleans())
def test_case_and_separator_do_not_matter(locale: str, sep: str, upper: bool) -> None:
    variant = locale.replace("-", sep)
    variant = variant.upper() if upper else variant.lower()
    assert canonical_locale(variant) == locale


@given(st.text(max_size=16))
def test_canonicalising_is_idempotent_or_refuses(text: str) -> None:
    try:
        once = canonical_locale(text)
    except ValueError:
        return
    assert canonical_locale(once) == once
    assert re.fullmatch(r"[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?", once)


channel_lists = st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True)


@given(channel_lists)
def test_distinct_known_channels_are_kept_in_order(channels: list[str]) -> None:
    assert check_channels(channels) == channels


@given(channel_lists, st.data())
def test_a_repeated_channel_is_refused(channels: list[str], data: st.DataObject) -> None:
    repeated = [*channels, data.draw(st.sampled_from(channels))]
    with pytest.raises(ValueError, match="listed twice"):
        check_channels(repeated)


@given(channel_lists, st.text(min_size=1, max_size=10).filter(lambda s: s not in CHANNELS))
def test_an_unknown_channel_is_named(channels: list[str], unknown: str) -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        check_channels([*channels, unknown])


@given(st.sampled_from(sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})))
def test_every_iana_zone_is_a_timezone(name: str) -> None:
    assert check_timezone(name) == name


@given(st.text(max_size=30))
def test_anything_accepted_as_a_timezone_loads(text: str) -> None:
    try:
        check_timezone(text)
    except ValueError:
        return
    zoneinfo.ZoneInfo(text)


@pytest.mark.parametrize("name", ["localtime", "Factory", "../etc/passwd", "", "utc"])
def test_host_specific_or_malformed_zone_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="IANA"):
        check_timezone(name)


@pytest.mark.parametrize("value", ["auto", ["auto"]])
def test_auto_in_any_spelling_is_auto(value: Any) -> None:
    assert check_channels(value) == "auto"


json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)
data_dicts = st.dictionaries(st.text(max_size=6), json_data, max_size=4)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _nul_somewhere(value: Any, draw: Any) -> Any:
    """``value`` with one of its strings (or, lacking any, a new key) holding a NUL."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: _nul_somewhere(value[key], draw)}
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        return [*value[:index], _nul_somewhere(value[index], draw), *value[index + 1:]]
    if isinstance(value, str):
        return value + "\x00"
    return "\x00"


@given(data_dicts)
def test_template_data_without_nul_is_accepted_as_it_is(data: dict[str, Any]) -> None:
    clean = _without_nul(data)
    assert check_data(clean) == clean


@given(data_dicts.filter(bool), st.data())
def test_a_nul_anywhere_in_template_data_is_refused_with_its_path(
    data: dict[str, Any], draw: st.DataObject
) -> None:
    spoiled = _nul_somewhere(_without_nul(data), draw.draw)

    with pytest.raises(ValueError, match=r"(?s)^data[.\[].* contains a NUL character"):
        check_data(spoiled)
