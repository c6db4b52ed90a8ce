"""Circuit breakers per provider: closed → open → half-open on a sliding-window failure rate.

The state lives in a store shared by every worker process (one Redis hash per breaker, decided by
Lua on the server's clock), so one bad provider is detected once, not once per process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Protocol

from redis.asyncio import Redis

from tidings import keys
from tidings.errors import ConfigurationError


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to "may I call this provider now?"."""

    state: BreakerState
    allowed: bool
    retry_after: float = 0.0
    """Seconds until a call may be allowed again (0 when allowed)."""
    trial: bool = False
    """This permit holds one of the half-open trial slots: pass it back to ``record``."""
    transition: Transition | None = None
    """The state change asking caused (open → half-open), if any."""
    round: int = 0
    """The half-open round a trial permit belongs to: a late answer from an earlier round
    (the breaker reopened and half-opened again meanwhile) is not counted."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one breaker; ``calls``/``failures`` are the window that opened it."""

    name: str
    old: BreakerState
    new: BreakerState
    calls: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens, for how long, and how it tests the provider again."""

    window_s: float = 30.0
    """Length of the sliding window the failure rate is measured over."""
    buckets: int = 10
    """Time buckets the window slides by (each ``window_s / buckets`` long)."""
    min_calls: int = 10
    """Calls the window must hold before the failure rate can open the breaker."""
    failure_rate: float = 0.5
    """Share of failed calls (0 < rate ≤ 1) that opens it."""
    open_s: float = 30.0
    """How long an open breaker refuses calls before it half-opens."""
    half_open_calls: int = 3
    """Trial calls let through while half-open; that many successes close it, a failure
    reopens it."""

    def __post_init__(self) -> None:
        checks = {
            "window_s": self.window_s > 0, "buckets": 1 <= self.buckets <= 1000,
            "min_calls": self.min_calls >= 1, "failure_rate": 0 < self.failure_rate <= 1,
            "open_s": self.open_s > 0, "half_open_calls": self.half_open_calls >= 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigurationError(
                    f"breaker setting {name}={value!r} is out of range: window_s, open_s > 0; "
                    "1 ≤ buckets ≤ 1000; min_calls, half_open_calls ≥ 1; 0 < failure_rate ≤ 1")

    @classmethod
    def from_config(cls, mapping: Mapping[str, object]) -> BreakerConfig:
        """Build from a settings mapping; an unknown key or a bad value names the field."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(mapping) - set(types))
        if unknown:
            raise ConfigurationError(f"unknown breaker setting(s) {', '.join(unknown)}; "
                                     f"known: {', '.join(types)}")
        values: dict[str, float | int] = {}
        for name, raw in mapping.items():
            kind, what = (int, "a whole number") if types[name] == "int" else (float, "a number")
            try:
                if isinstance(raw, bool) or not isinstance(raw, str | int | float) or (
                        kind is int and isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError(raw)
                values[name] = kind(raw)
            except ValueError:
                raise ConfigurationError(
                    f"breaker setting {name}={raw!r} is not {what}") from None
        return cls(**values)  # type: ignore[arg-type]


class BreakerStore(Protocol):
    """Where breaker state lives; every operation is atomic per breaker."""

    async def allow(self, name: str, config: BreakerConfig) -> Permit: ...

    async def record(self, name: str, config: BreakerConfig, ok: bool, *,
                     trial: bool = False, round: int = 0) -> Transition | None: ...

    async def state(self, name: str) -> BreakerState:
        """The state a call would find now (an open breaker past its time reads half-open)."""
        ...


# A trial call usually answers within a second: ask again then rather than after open_s.
_TRIAL_WAIT_MS = 1000
# Idle breakers expire, so renamed providers leave nothing behind; never before they could
# have half-opened and closed again.
_MIN_TTL_MS = 86_400_000


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _ttl_ms(config: BreakerConfig) -> int:
    return max(_MIN_TTL_MS, 2 * (_ms(config.window_s) + _ms(config.open_s)))


# ARGV: now_ms (-1: the server's clock), window_ms, buckets, min_calls, failure_rate, open_ms,
# half_open_calls, ttl_ms. Fields: s state, u open until, t trials issued, k trial successes,
# a last trial issued at, r half-open round (kept across resets); e<i> n<i> f<i> epoch, calls
# and failures of window bucket i.
_PRELUDE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('time')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window_ms, buckets = tonumber(ARGV[2]), tonumber(ARGV[3])
local min_calls, rate, open_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local trials_max, ttl_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = redis.call('hmget', key, 's', 'u', 't', 'k', 'a', 'r')
local state, open_until = h[1] or 'closed', tonumber(h[2]) or 0
local trials, oks, trial_at = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
local round = tonumber(h[6]) or 0
"""

_ALLOW = _PRELUDE + f"""
if state == 'closed' then return {{'closed', 1, 0, 0, '', round}} end
local from = ''
if state == 'open' then
  if now < open_until then return {{'open', 0, open_until - now, 0, '', round}} end
  state, trials, oks, from, round = 'half_open', 0, 0, 'open', round + 1
end
if trials >= trials_max and now >= trial_at + open_ms then trials = oks end
if trials < trials_max then
  redis.call('hset', key, 's', state, 't', trials + 1, 'k', oks, 'a', now, 'r', round)
  redis.call('pexpire', key, ttl_ms)
  return {{'half_open', 1, 0, 1, from, round}}
end
return {{'half_open', 0, math.min({_TRIAL_WAIT_MS}, trial_at + open_ms - now), 0, from, round}}
"""

# ARGV[9] ok (1/0), ARGV[10] trial (1/0), ARGV[11] the trial's round. Reply: nil, or
# {old, new, calls, failures}.
_RECORD = _PRELUDE + """
local ok, trial, asked = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if state == 'open' or (state == 'half_open' and (trial == 0 or asked ~= round)) then
  return false
end
if state == 'half_open' then
  if ok == 0 then
    redis.call('hset', key, 's', 'open', 'u', now + open_ms, 't', 0, 'k', 0)
    redis.call('pexpire', key, ttl_ms)
    return {'half_open', 'open', 0, 0}
  end
  if oks + 1 < trials_max then
    redis.call('hset', key, 'k', oks + 1)
    return false
  end
  redis.call('del', key)
  redis.call('hset', key, 'r', round)
  redis.call('pexpire', key, ttl_ms)
  return {'half_open', 'closed', 0, 0}
end
local epoch = math.floor(now / (window_ms / buckets))
local slot = epoch % buckets
local names = {}
for i = 0, buckets - 1 do
  names[#names + 1] = 'e' .. i; names[#names + 1] = 'n' .. i; names[#names + 1] = 'f' .. i
end
local w = redis.call('hmget', key, unpack(names))
local calls, fails, here_n, here_f = 1, 1 - ok, 1, 1 - ok
for i = 0, buckets - 1 do
  local e = tonumber(w[3 * i + 1])
  if e and e > epoch - buckets then
    local n, f = tonumber(w[3 * i + 2]) or 0, tonumber(w[3 * i + 3]) or 0
    calls, fails = calls + n, fails + f
    if e == epoch then here_n, here_f = here_n + n, here_f + f end
  end
end
if calls >= min_calls and fails >= calls * rate then
  redis.call('del', key)
  redis.call('hset', key, 's', 'open', 'u', now + open_ms, 'r', round)
  redis.call('pexpire', key, ttl_ms)
  return {'closed', 'open', calls, fails}
end
redis.call('hset', key, 'e' .. slot, epoch, 'n' .. slot, here_n, 'f' .. slot, here_f)
redis.call('pexpire', key, ttl_ms)
return false
"""

_STATE = """
local h = redis.call('hmget', KEYS[1], 's', 'u')
local state = h[1] or 'closed'
if state == 'open' then
  local t = redis.call('time')
  local now = tonumber(ARGV[1])
  if now < 0 then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
  if now >= tonumber(h[2]) then return 'half_open' end
end
return state
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore:
    """Breakers in Redis hashes, shared by every process using ``namespace``.

    Time is the Redis server's clock, so workers with skewed clocks agree; ``clock`` (seconds)
    replaces it for tests that need to move time by hand.
    """

    def __init__(self, client: Redis, namespace: str, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.namespace = namespace
        self._client = client
        self._clock = clock
        self._registered: set[str] = set()
        self._allow = client.register_script(_ALLOW)
        self._record = client.register_script(_RECORD)
        self._state = client.register_script(_STATE)

    def _now(self) -> int:
        return _ms(self._clock()) if self._clock is not None else -1

    def _args(self, config: BreakerConfig) -> list[int | float]:
        return [self._now(), _ms(config.window_s), config.buckets, config.min_calls,
                config.failure_rate, _ms(config.open_s), config.half_open_calls,
                _ttl_ms(config)]

    async def allow(self, name: str, config: BreakerConfig) -> Permit:
        if name not in self._registered:  # once per process: lets metrics find every breaker
            await self._client.sadd(keys.breaker_registry(self.namespace), name)
            self._registered.add(name)
        state, allowed, wait_ms, trial, old, round_ = await self._allow(
            keys=[keys.breaker(self.namespace, name)], args=self._args(config))
        new = BreakerState(_text(state))
        change = Transition(name, BreakerState(_text(old)), new) if _text(old) else None
        return Permit(new, bool(allowed), wait_ms / 1000, bool(trial), change, int(round_))

    async def states(self) -> dict[str, BreakerState]:
        """Every registered breaker's state as a call would find it now."""
        raw = await self._client.smembers(keys.breaker_registry(self.namespace))
        names = sorted(_text(name) for name in raw)
        return {name: await self.state(name) for name in names}

    async def record(self, name: str, config: BreakerConfig, ok: bool, *,
                     trial: bool = False, round: int = 0) -> Transition | None:
        reply = await self._record(keys=[keys.breaker(self.namespace, name)],
                                   args=[*self._args(config), int(ok), int(trial), round])
        if reply is None:
            return None
        old, new, calls, failures = reply
        return Transition(name, BreakerState(_text(old)), BreakerState(_text(new)),
                          int(calls), int(failures))

    async def state(self, name: str) -> BreakerState:
        reply = await self._state(keys=[keys.breaker(self.namespace, name)], args=[self._now()])
        return BreakerState(_text(reply))


@dataclass
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    open_until: int = 0
    trials: int = 0
    oks: int = 0
    trial_at: int = 0
    round: int = 0
    window: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """slot -> (epoch, calls, failures)."""


class MemoryBreakerStore:
    """The same breakers in one process's memory, on an injected clock (seconds): for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}

    async def allow(self, name: str, config: BreakerConfig) -> Permit:
        b, now = self._breakers.setdefault(name, _Breaker()), _ms(self._clock())
        if b.state is BreakerState.CLOSED:
            return Permit(BreakerState.CLOSED, True, round=b.round)
        change = None
        if b.state is BreakerState.OPEN:
            if now < b.open_until:
                return Permit(BreakerState.OPEN, False, (b.open_until - now) / 1000,
                              round=b.round)
            b.state, b.trials, b.oks, b.round = BreakerState.HALF_OPEN, 0, 0, b.round + 1
            change = Transition(name, BreakerState.OPEN, BreakerState.HALF_OPEN)
        open_ms = _ms(config.open_s)
        if b.trials >= config.half_open_calls and now >= b.trial_at + open_ms:
            b.trials = b.oks  # permits never answered: presumed lost with their process
        if b.trials < config.half_open_calls:
            b.trials, b.trial_at = b.trials + 1, now
            return Permit(BreakerState.HALF_OPEN, True, 0.0, True, change, b.round)
        wait = min(_TRIAL_WAIT_MS, b.trial_at + open_ms - now)
        return Permit(BreakerState.HALF_OPEN, False, wait / 1000, False, change, b.round)

    async def record(self, name: str, config: BreakerConfig, ok: bool, *,
                     trial: bool = False, round: int = 0) -> Transition | None:
        b, now = self._breakers.setdefault(name, _Breaker()), _ms(self._clock())
        if b.state is BreakerState.OPEN or (
            b.state is BreakerState.HALF_OPEN and (not trial or round != b.round)
        ):
            return None  # answers to calls allowed before the breaker opened, or last round
        if b.state is BreakerState.HALF_OPEN:
            if not ok:
                b.state, b.open_until, b.trials, b.oks = (
                    BreakerState.OPEN, now + _ms(config.open_s), 0, 0)
                return Transition(name, BreakerState.HALF_OPEN, BreakerState.OPEN)
            b.oks += 1
            if b.oks < config.half_open_calls:
                return None
            self._breakers[name] = _Breaker(round=b.round)
            return Transition(name, BreakerState.HALF_OPEN, BreakerState.CLOSED)
        return self._count(name, b, config, now, ok)

    def _count(self, name: str, b: _Breaker, config: BreakerConfig, now: int,
               ok: bool) -> Transition | None:
        epoch = math.floor(now / (_ms(config.window_s) / config.buckets))
        failed = 0 if ok else 1
        calls, fails, here_n, here_f = 1, failed, 1, failed
        for e, n, f in b.window.values():
            if e > epoch - config.buckets:
                calls, fails = calls + n, fails + f
                if e == epoch:
                    here_n, here_f = here_n + n, here_f + f
        if calls >= config.min_calls and fails >= calls * config.failure_rate:
            self._breakers[name] = _Breaker(BreakerState.OPEN, now + _ms(config.open_s),
                                            round=b.round)
            return Transition(name, BreakerState.CLOSED, BreakerState.OPEN, calls, fails)
        b.window[epoch % config.buckets] = (epoch, here_n, here_f)
        return None

    async def state(self, name: str) -> BreakerState:
        b = self._breakers.get(name)
        if b is None:
            return BreakerState.CLOSED
        if b.state is BreakerState.OPEN and _ms(self._clock()) >= b.open_until:
            return BreakerState.HALF_OPEN
        return b.state
