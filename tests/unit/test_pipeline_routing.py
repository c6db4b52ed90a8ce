"""Type patterns (segment wildcards) and channel resolution with reasons for exclusions."""

from __future__ import annotations

from datetime import UTC, datetime, time
from functools import cache
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import App
from tidings.message import Envelope, Message, Priority
from tidings.notification import Notification
from tidings.pipelines.graph import Item
from tidings.pipelines.notifications import NotificationPipeline
from tidings.pipelines.preferences import Preferences, QuietHours
from tidings.pipelines.routing import Route, Router, RoutingError, Rule, matches


def _notification(channels: Any = "auto", priority: str = "normal",
                  type_: str = "order.shipped", **recipient: Any) -> Notification:
    return Notification.model_validate({
        "type": type_,
        "channels": channels,
        "recipient": {"user_id": "u1", "email": "ada@example.com", "phone": "+14155550123",
                      **recipient},
        "content": {"body": "hi"},
        "priority": priority,
    })


# -- patterns: examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "type_", "expected"),
    [
        ("order.shipped", "order.shipped", True),
        ("order.shipped", "order.paid", False),
        ("order.*", "order.shipped", True),
        ("order.*", "order.item.shipped", False),
        ("*.shipped", "order.shipped", True),
        ("*.shipped", "order.item.shipped", False),
        ("order.ship*", "order.shipped", True),
        ("order.?aid", "order.paid", True),
        ("order.**", "order.shipped", True),
        ("order.**", "order.item.shipped", True),
        ("order.**", "orders.shipped", False),
        ("**.shipped", "order.item.shipped", True),
        ("**.shipped", "order.shipped.late", False),
        ("order.**.shipped", "order.shipped", True),
        ("order.**.shipped", "order.a.b.shipped", True),
        ("**", "anything.at.all", True),
        ("*", "order.shipped", False),
    ],
)
def test_pattern_examples(pattern: str, type_: str, expected: bool) -> None:
    assert matches(pattern, type_) is expected


@pytest.mark.parametrize("pattern", ["Order.*", "order..x", "order.a**", "", "order.x-y"])
def test_a_malformed_pattern_is_refused_saying_why(pattern: str) -> None:
    with pytest.raises(RoutingError, match="bad type pattern"):
        matches(pattern, "order.shipped")


# -- patterns: properties against a reference matcher ----------------------------------------

words = st.text("abcx_", min_size=1, max_size=4)
types = st.lists(words, min_size=2, max_size=5).map(".".join)
segment_patterns = st.one_of(
    words,
    st.just("*"),
    st.just("**"),
    st.builds(lambda w: w + "*", words),
    st.builds(lambda w: "?" + w, words),
)
patterns = st.lists(segment_patterns, min_size=1, max_size=5).map(".".join)


def _segment(pattern: str, word: str) -> bool:
    if not pattern:
        return not word
    head = pattern[0]
    if head == "*":
        return any(_segment(pattern[1:], word[i:]) for i in range(len(word) + 1))
    if not word:
        return False
    return (head == "?" or head == word[0]) and _segment(pattern[1:], word[1:])


def _reference(pattern: str, type_: str) -> bool:
    """Straight from the documented semantics, by recursion over segments."""
    ps, ts = tuple(pattern.split(".")), tuple(type_.split("."))

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(ps):
            return j == len(ts)
        if ps[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(ts) + 1))
        return j < len(ts) and _segment(ps[i], ts[j]) and go(i + 1, j + 1)

    return go(0, 0)


@given(patterns, types)
def test_matching_agrees_with_the_reference_semantics(pattern: str, type_: str) -> None:
    assert matches(pattern, type_) is _reference(pattern, type_)


@given(types)
def test_a_type_matches_itself_and_double_star(type_: str) -> None:
    assert matches(type_, type_)
    assert matches("**", type_)


@given(types)
def test_single_star_segments_match_exactly_that_many_segments(type_: str) -> None:
    count = type_.count(".") + 1
    assert matches(".".join(["*"] * count), type_)
    assert not matches(".".join(["*"] * (count + 1)), type_)
    assert not matches(".".join(["*"] * (count - 1)), type_)


@given(types, types)
def test_a_pattern_without_wildcards_matches_only_itself(pattern: str, type_: str) -> None:
    assert matches(pattern, type_) is (pattern == type_)


@given(types)
def test_a_prefix_with_double_star_matches_every_deeper_type(type_: str) -> None:
    first = type_.split(".")[0]
    assert matches(f"{first}.**", type_)
    assert matches(f"**.{type_.split('.')[-1]}", type_)


# -- routing ---------------------------------------------------------------------------------


def test_explicit_channels_fan_out_in_the_order_given() -> None:
    route = Router().route(_notification(["sms", "email"]))

    assert route == Route(("sms", "email"), "fanout", {})


def test_auto_follows_the_users_preferred_order_as_a_fallback_chain() -> None:
    prefs = Preferences(user_id="u1", channel_order=("sms", "email"))

    assert Router().route(_notification(), prefs) == Route(("sms", "email"), "fallback", {})


def test_auto_without_a_preferred_order_uses_the_first_matching_rule() -> None:
    router = Router([Rule("billing.*", channels=("email",)),
                     Rule("order.*", channels=("sms", "email")),
                     Rule("**", channels=("email",))])

    assert router.route(_notification()).channels == ("sms", "email")


def test_auto_with_no_rule_uses_the_default_channels() -> None:
    assert Router(default_channels=("email",)).route(_notification()).channels == ("email",)


def test_a_rule_can_match_on_priority() -> None:
    router = Router([Rule("**", channels=("sms",), priorities=frozenset({"critical"})),
                     Rule("**", channels=("email",))])

    assert router.route(_notification(priority="critical")).channels == ("sms",)
    assert router.route(_notification(priority="low")).channels == ("email",)


def test_an_opted_out_channel_is_excluded_with_a_reason() -> None:
    prefs = Preferences(user_id="u1", opted_out=frozenset({"sms"}))

    route = Router().route(_notification(["sms", "email"]), prefs)

    assert route.channels == ("email",)
    assert route.excluded == {"sms": "user opted out of sms"}


def test_a_denied_channel_is_excluded_naming_the_rule() -> None:
    router = Router([Rule("marketing.**", deny=("sms",), name="no marketing sms")])

    route = router.route(_notification(["sms", "email"], type_="marketing.promo"))

    assert route.channels == ("email",)
    assert route.excluded == {"sms": "denied by rule no marketing sms"}


def test_auto_excludes_a_channel_the_recipient_has_no_address_for() -> None:
    prefs = Preferences(user_id="u1", channel_order=("push", "email"))

    route = Router().route(_notification(), prefs)

    assert route.channels == ("email",)
    assert route.excluded == {"push": "recipient has no device token"}


def test_a_rule_with_an_unknown_channel_is_refused() -> None:
    with pytest.raises(RoutingError, match=r"rule order\.\*: unknown channel 'fax'"):
        Rule("order.*", channels=("fax",))  # type: ignore[arg-type]


async def test_a_send_at_inside_quiet_hours_waits_for_their_end() -> None:
    pipeline = NotificationPipeline(App("quiet"))
    prefs = Preferences(user_id="u1", quiet_hours=QuietHours(time(22), time(7)),
                        timezone="Europe/Lisbon")
    now = datetime(2026, 6, 1, 11, 0, tzinfo=UTC)  # noon in Lisbon: not quiet
    n = _notification(["email"]).model_copy(
        update={"send_at": datetime(2026, 6, 2, 1, 0, tzinfo=UTC)})  # 02:00 in Lisbon: quiet
    item = Item(Message(n, Envelope(id="m1"), "0-1", 0), n, "u1", Priority.NORMAL)

    await pipeline._route_one(item, n, prefs, now)

    assert item.attrs["until"] == datetime(2026, 6, 2, 6, 0, tzinfo=UTC)  # 07:00 in Lisbon
