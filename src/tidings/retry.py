"""Retry policies: how long to wait before each retry, when to give up, which policy applies.

Delays follow the formulas of AWS's "Exponential Backoff and Jitter"; every delay is capped at
``max_delay`` and stays finite however large the attempt number.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn, get_args

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.errors import ConfigurationError, PayloadError, Reject
from tidings.tables import queue_configs

# tidings.agent imports this module, and tidings.pipelines and tidings.scheduling import the App
# (hence the agent): their pattern matcher and duration parser are imported where used.

Strategy = Literal[
    "fixed", "linear", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"
]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
DEFAULT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_DURATIONS = ("base", "max_delay", "deadline")
_KEYS = ("strategy", "base", "factor", "max_delay", "max_attempts", "deadline", "retry_statuses")
_MILLIS = re.compile(r"(\d+)\s*ms")
_ZERO = re.compile(r"0+\s*[wdhms]")
_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def _bad(name: str, reason: str, value: object) -> NoReturn:
    raise ConfigurationError(f"retry_policy.{name}: {reason}, got {value!r}")


def parse_seconds(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h30m``, ``2d``: seconds, zero allowed; ValueError if not."""
    from tidings.scheduling.calendar import InvalidSchedule, parse_duration

    compact = text.strip().lower()
    if millis := _MILLIS.fullmatch(compact):
        return int(millis[1]) / 1000
    if _ZERO.fullmatch(compact):
        return 0.0  # the calendar's parser wants intervals longer than zero; a delay may be 0
    try:
        return parse_duration(compact).total_seconds()
    except (InvalidSchedule, OverflowError):
        raise ValueError(
            f"{text!r} is not a duration: write seconds as a number, or e.g. '500ms', '30s', "
            "'5m', '1h30m', '2h', '1d'"
        ) from None


def format_seconds(seconds: float) -> str:
    """A short form of ``seconds`` (``1h30m``, ``500ms``) that parse_seconds reads back."""
    if seconds == int(seconds):
        rest, text = int(seconds), ""
        for unit, size in _UNITS:
            count, rest = divmod(rest, size)
            text += f"{count}{unit}" if count else ""
        return text or "0s"
    millis = round(seconds * 1000)
    return f"{millis}ms" if millis / 1000 == seconds else f"{seconds:g}s"


def _number(name: str, value: object, least: int, unit: str = " of seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= least
    ):
        _bad(name, f"must be a finite number{unit} >= {least}", value)
    return float(value)


def _statuses(value: object) -> frozenset[int]:
    if not isinstance(value, list | tuple | set | frozenset):
        _bad("retry_statuses", "must be a list of HTTP status codes", value)
    for status in value:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            _bad("retry_statuses", "must hold HTTP status codes from 100 to 599", status)
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed message is retried: the delay before each retry and when to give up.

    Attempts count from 1 (the first delivery). ``decorrelated_jitter`` ignores ``factor``:
    its growth comes from ``previous`` (AWS's formula multiplies it by 3).
    """

    strategy: Strategy = "exponential"
    base: float = 1.0
    """Seconds: the first delay (``fixed``: every delay; ``linear``: the step)."""
    factor: float = 2.0
    """Growth per attempt of ``exponential``, ``full_jitter`` and ``equal_jitter``; >= 1."""
    max_delay: float = 300.0
    """Cap on any one delay, in seconds; >= base."""
    max_attempts: int = 5
    """Attempts in all, the first included; 1 = never retry."""
    deadline: float | None = None
    """Seconds from the first failure after which no retry is scheduled; None = no deadline."""
    retry_statuses: frozenset[int] = DEFAULT_STATUSES
    give_up_on: tuple[type[BaseException], ...] = ()
    """Exception types never retried (not part of the JSON config)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            _bad("strategy", f"must be one of {', '.join(STRATEGIES)}", self.strategy)
        set_ = object.__setattr__  # frozen: normalise numbers so equal policies compare equal
        for name, least, unit in (("base", 0, " of seconds"), ("max_delay", 0, " of seconds"),
                                  ("factor", 1, ""), ("deadline", 0, " of seconds")):
            if getattr(self, name) is not None:
                set_(self, name, _number(name, getattr(self, name), least, unit))
        if self.max_delay < self.base:
            _bad("max_delay", f"must be >= base ({format_seconds(self.base)})", self.max_delay)
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            _bad("max_attempts", "must be a whole number >= 1 (1 = never retry)", attempts)
        set_(self, "retry_statuses", _statuses(self.retry_statuses))
        for kind in self.give_up_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                _bad("give_up_on", "must hold exception classes", kind)

    def backoff(
        self, attempt: int, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Delay in seconds before attempt ``attempt + 1``, after attempt ``attempt`` (>= 1) failed.

        ``previous`` is the last delay (only ``decorrelated_jitter`` uses it); ``rng`` makes the
        jitter reproducible.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (the first delivery is 1), got {attempt}")
        uniform = rng.uniform if rng is not None else random.uniform
        if self.strategy == "fixed":
            delay = self.base
        elif self.strategy == "linear":
            delay = self._stepped(attempt)
        elif self.strategy == "full_jitter":
            delay = uniform(0.0, self._grown(attempt))
        elif self.strategy == "equal_jitter":
            half = self._grown(attempt) / 2
            delay = half + uniform(0.0, half)
        elif self.strategy == "decorrelated_jitter":
            delay = self._decorrelated(previous, uniform)
        else:
            delay = self._grown(attempt)
        return min(self.max_delay, max(0.0, delay))

    def _stepped(self, attempt: int) -> float:
        """``base * attempt``, capped at max_delay without ever overflowing."""
        if self.base == 0:
            return 0.0
        if attempt >= self.max_delay / self.base:  # int vs float compares exactly, at any size
            return self.max_delay
        return self.base * attempt

    def _decorrelated(
        self, previous: float | None, uniform: Callable[[float, float], float]
    ) -> float:
        """``uniform(base, 3 * previous)``; a previous delay past max_delay counts as max_delay."""
        if previous is not None and not previous >= 0:
            raise ValueError(f"previous delay must be >= 0 seconds, got {previous}")
        last = self.base if previous is None else min(previous, self.max_delay)
        high = max(self.base, 3 * last)
        return min(high, uniform(self.base, high))

    def _grown(self, attempt: int) -> float:
        """``base * factor ** (attempt - 1)``, capped at max_delay without ever overflowing."""
        if self.base == 0 or self.factor == 1:
            return self.base
        steps = (math.log(self.max_delay) - math.log(self.base)) / math.log(self.factor)
        if attempt - 1 >= steps:  # int vs float compares exactly, at any size
            return self.max_delay
        try:
            return min(self.max_delay, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # a tiny base: the power alone overflows, the product does not
            exponent = math.log(self.base) + (attempt - 1) * math.log(self.factor)
            return min(self.max_delay, math.exp(exponent))

    def next_delay(
        self, attempt: int, *, elapsed: float, previous: float | None = None,
        requested: float | None = None, rng: random.Random | None = None,
    ) -> float | None:
        """The delay before the next attempt, or None when the policy gives up.

        It gives up when attempt ``attempt`` was the last (``attempt >= max_attempts``) or when the
        next attempt would start after the deadline (``elapsed + delay > deadline``, ``elapsed``
        counted from the first failure). A ``requested`` delay (a handler's ``Retry(delay)``, a
        provider's ``Retry-After``) replaces the strategy's, but is still capped by max_delay.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (the first delivery is 1), got {attempt}")
        if attempt >= self.max_attempts:
            return None
        if requested is None:
            delay = self.backoff(attempt, previous, rng)
        elif requested >= 0:
            delay = min(requested, self.max_delay)
        else:
            raise ValueError(f"requested delay must be >= 0 seconds, got {requested}")
        if self.deadline is not None and elapsed + delay > self.deadline:
            return None
        return delay

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying: never a Reject, a PayloadError (the same bytes fail
        the same way) or a ``give_up_on`` type; an HTTP status error if its status is in
        ``retry_statuses``; any other exception, yes."""
        if isinstance(exc, (Reject, PayloadError, *self.give_up_on)):
            return False
        if isinstance(exc, httpx.HTTPStatusError):
            return self.retryable_status(exc.response.status_code)
        return True

    def retryable_status(self, status: int) -> bool:
        """Whether an HTTP response with ``status`` is worth retrying."""
        return status in self.retry_statuses

    @classmethod
    def from_config(cls, data: Mapping[str, object]) -> RetryPolicy:
        """The policy a JSON object describes (``queue_configs.retry_policy``); {} = defaults.

        Durations (base, max_delay, deadline) are seconds or strings such as ``"500ms"``,
        ``"30s"``, ``"5m"``; anything unknown or out of range raises ConfigurationError.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"retry_policy: must be a JSON object, got {data!r}")
        fields: dict[str, Any] = {}  # every value's type is checked by __post_init__
        for name, value in data.items():
            if name not in _KEYS:
                _bad(name, f"unknown key: use {', '.join(_KEYS)}", value)
            if name in _DURATIONS and isinstance(value, str):
                try:
                    value = parse_seconds(value)
                except ValueError as exc:
                    raise ConfigurationError(f"retry_policy.{name}: {exc}") from None
            fields[name] = _statuses(value) if name == "retry_statuses" else value
        return cls(**fields)

    def to_config(self) -> dict[str, object]:
        """The JSON object from_config reads back into this policy (give_up_on is not kept)."""
        return {
            "strategy": self.strategy, "base": self.base, "factor": self.factor,
            "max_delay": self.max_delay, "max_attempts": self.max_attempts,
            "deadline": self.deadline, "retry_statuses": sorted(self.retry_statuses),
        }

    def describe(self) -> str:
        """One line for people: ``exponential from 1s ×2, at most 5 attempts, ≤ 5m each``."""  # noqa: RUF002
        base = format_seconds(self.base)
        shape = {
            "fixed": f"fixed {base}",
            "linear": f"linear +{base} per attempt",
            "decorrelated_jitter": f"decorrelated_jitter from {base}",
        }.get(self.strategy, f"{self.strategy} from {base} \N{MULTIPLICATION SIGN}{self.factor:g}")
        parts = [shape, "never retried" if self.max_attempts == 1
                 else f"at most {self.max_attempts} attempts",
                 f"\N{LESS-THAN OR EQUAL TO} {format_seconds(self.max_delay)} each"]
        if self.deadline is not None:
            parts.append(f"none after {format_seconds(self.deadline)}")
        return ", ".join(parts)


def _specificity(pattern: str) -> tuple[bool, int, int, str]:
    wild = sum(map(pattern.count, "*?"))
    # Exact first, then more literal characters, then fewer wildcards; the text breaks ties.
    return (wild == 0, len(pattern) - wild, -wild, pattern)


@dataclass(frozen=True)
class RetryPolicies:
    """Which policy a message gets: the most specific of type > agent > queue > default.

    ``by_type`` keys are routing type patterns (see tidings.pipelines.routing): ``order.*``
    matches one segment after ``order.``, ``order.**`` any number, ``**`` every type.
    """

    default: RetryPolicy = field(default_factory=RetryPolicy)
    by_queue: Mapping[str, RetryPolicy] = field(default_factory=dict)
    """Topic name -> policy (from queue_configs)."""
    by_agent: Mapping[str, RetryPolicy] = field(default_factory=dict)
    by_type: Mapping[str, RetryPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tidings.pipelines.routing import compile_pattern

        for pattern in self.by_type:
            compile_pattern(pattern)  # a malformed pattern raises RoutingError now, not later
        for name in ("by_queue", "by_agent", "by_type"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def for_message(self, *, topic: str, agent: str, type: str | None = None) -> RetryPolicy:
        """The policy of a message: the most specific matching type pattern (exact beats
        wildcard, more literal characters beat fewer), else the agent's, the queue's, default."""
        from tidings.pipelines.routing import matches

        if type is not None:
            matching = [p for p in self.by_type if matches(p, type)]
            if matching:
                return self.by_type[max(matching, key=_specificity)]
        if agent in self.by_agent:
            return self.by_agent[agent]
        return self.by_queue.get(topic, self.default)


async def load_queue_policies(engine: AsyncEngine) -> dict[str, RetryPolicy]:
    """The retry policy of each enabled queue in ``queue_configs``, by topic.

    A policy that names no ``max_attempts`` takes the row's ``max_deliveries``.
    """
    table = queue_configs.c
    query = select(table.name, table.topic, table.max_deliveries, table.retry_policy).where(
        table.enabled
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    policies: dict[str, RetryPolicy] = {}
    for name, topic, max_deliveries, config in rows:
        try:
            if isinstance(config, Mapping):
                config = {"max_attempts": max_deliveries, **config}
            policies[topic] = RetryPolicy.from_config(config)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"queue {name!r} (topic {topic!r}): {exc}; fix its row in queue_configs"
            ) from None
    return policies
