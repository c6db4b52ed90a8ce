"""Routing: which channels a notification goes to, in what order, and why any were left out.

Type patterns match dot-separated notification types segment by segment:

- a literal segment matches itself (``order.shipped``);
- ``*`` inside a segment matches any run of characters within that one segment, ``?`` one
  character (``order.*`` matches ``order.shipped`` but not ``order.item.shipped``;
  ``order.ship*`` matches ``order.shipped``);
- ``**`` as a whole segment matches zero or more segments (``order.**`` matches ``order.paid``
  and ``order.item.shipped``; ``**.failed`` any type ending in ``failed``; ``**`` everything).

A dot never matches inside ``*`` or ``?``: a wildcard cannot cross a segment boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, get_args

from tidings.errors import ConfigurationError
from tidings.notification import Channel, Notification, NotificationPriority
from tidings.pipelines.preferences import Preferences

_CHANNELS: tuple[Channel, ...] = get_args(Channel)
_SEGMENT = re.compile(r"[a-z0-9_*?]+")


class RoutingError(ConfigurationError):
    """A routing rule that cannot work: a malformed pattern or an unknown channel."""


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression a type pattern stands for (see the module docstring)."""
    segments = pattern.split(".")
    for segment in segments:
        if segment != "**" and (not _SEGMENT.fullmatch(segment) or "**" in segment):
            raise RoutingError(
                f"bad type pattern {pattern!r}: segment {segment!r} may hold lowercase letters, "
                "digits, '_', '*' and '?', or be exactly '**'"
            )
    # Consecutive '**' mean the same as one.
    collapsed = [s for i, s in enumerate(segments) if not (s == "**" and segments[i - 1 :i]
                                                           == ["**"])]
    if collapsed == ["**"]:
        return re.compile(r".+")
    regex, separator = "", ""
    for segment in collapsed:
        if segment == "**":
            # Zero or more whole segments, each carrying its own separator.
            regex += r"(?:[^.]+\.)*" if not separator else r"(?:\.[^.]+)*"
            continue
        body = "".join(
            "[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch) for ch in segment
        )
        regex += separator + body
        separator = r"\."
    return re.compile(regex)


def matches(pattern: str, type_: str) -> bool:
    """Whether the notification type ``type_`` matches ``pattern``."""
    return compile_pattern(pattern).fullmatch(type_) is not None


def _channels(values: Iterable[str], what: str) -> tuple[Channel, ...]:
    checked: list[Channel] = []
    for value in values:
        if value not in _CHANNELS:
            raise RoutingError(f"{what}: unknown channel {value!r}; use {', '.join(_CHANNELS)}")
        checked.append(value)
    return tuple(checked)


@dataclass(frozen=True, slots=True)
class Rule:
    """For types matching ``pattern`` (and one of ``priorities``, if given):

    ``channels`` — the default channels when the notification says ``auto`` and the user has no
    preferred order (the first matching rule with channels wins); ``deny`` — channels never used
    for these notifications (every matching rule's deny applies).
    """

    pattern: str
    channels: tuple[Channel, ...] = ()
    deny: tuple[Channel, ...] = ()
    priorities: frozenset[NotificationPriority] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        compile_pattern(self.pattern)
        label = f"rule {self.label}"
        object.__setattr__(self, "channels", _channels(self.channels, label))
        object.__setattr__(self, "deny", _channels(self.deny, label))

    @property
    def label(self) -> str:
        return self.name or self.pattern

    def applies(self, notification: Notification) -> bool:
        if self.priorities is not None and notification.priority not in self.priorities:
            return False
        return compile_pattern(self.pattern).fullmatch(notification.type) is not None


@dataclass(frozen=True, slots=True)
class Route:
    """The channels to try, in order, and why every other candidate was left out.

    ``mode`` is ``fanout`` (send on every channel: the producer named them) or ``fallback``
    (walk them in order until one delivers: ``auto``).
    """

    channels: tuple[Channel, ...]
    mode: Literal["fanout", "fallback"]
    excluded: dict[Channel, str] = field(default_factory=dict)


_ADDRESS = {"email": "email address", "sms": "phone number", "push": "device token"}


class Router:
    """Resolves a notification's channels from its request, the user's preferences and rules."""

    def __init__(self, rules: Sequence[Rule] = (), *,
                 default_channels: Sequence[Channel] = ("email",)) -> None:
        self.rules = tuple(rules)
        self.default_channels = _channels(default_channels, "default_channels")

    def route(self, notification: Notification, preferences: Preferences | None = None) -> Route:
        """The channels to try for ``notification``; a reason for each candidate excluded."""
        applying = [rule for rule in self.rules if rule.applies(notification)]
        if notification.channels != "auto":
            candidates: tuple[Channel, ...] = tuple(notification.channels)
            mode: Literal["fanout", "fallback"] = "fanout"
        else:
            candidates, mode = self._auto(applying, preferences), "fallback"
        excluded: dict[Channel, str] = {}
        denied = {ch: rule.label for rule in reversed(applying) for ch in rule.deny}
        for channel in candidates:
            if channel in denied:
                excluded[channel] = f"denied by rule {denied[channel]}"
            elif preferences is not None and channel in preferences.opted_out:
                excluded[channel] = f"user opted out of {channel}"
            elif not notification.recipient.addresses(channel):
                excluded[channel] = f"recipient has no {_ADDRESS.get(channel, 'address')}"
        chosen = tuple(ch for ch in candidates if ch not in excluded)
        return Route(chosen, mode, excluded)

    def _auto(self, applying: Sequence[Rule], preferences: Preferences | None) -> tuple[
            Channel, ...]:
        if preferences is not None and preferences.channel_order:
            return preferences.channel_order
        for rule in applying:
            if rule.channels:
                return rule.channels
        return self.default_channels
