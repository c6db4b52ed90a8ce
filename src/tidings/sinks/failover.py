"""Provider failover for one channel: each provider behind a shared circuit breaker.

While a provider's breaker is open its messages go to the channel's next provider; when every
breaker is open the result says how long to wait, so the caller waits without burning a retry.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence

from tidings.errors import ConfigurationError
from tidings.sinks.base import TRANSIENT, Delivery, Failure, Provider, SendResult, Stopwatch
from tidings.sinks.breaker import BreakerConfig, BreakerState, BreakerStore, Permit, Transition
from tidings.sinks.orchestration import guarded

_log = logging.getLogger(__name__)

# Permanent failures that are the provider's (or its configuration's) fault, not the message's:
# credentials refused, an unusable URL or TLS setup, a provider that broke its contract.
_PROVIDER_CODES = frozenset({"auth", "tls", "unsupported", "bad_url", "provider_error",
                             "refused"})
_PROVIDER_STATUSES = frozenset({401, 403, 404})


def provider_at_fault(failure: Failure) -> bool:
    """Whether a failure counts against the provider's breaker (and so fails over).

    Transient failures do; a dead address is the recipient's fault and never does; other
    permanent failures do when they come from the provider's side (rejected credentials…).
    """
    if failure.bad_address:
        return False
    if failure.transient:
        return True
    return failure.code in _PROVIDER_CODES or failure.http_status in _PROVIDER_STATUSES


class CircuitBreakers:
    """One process's front to the shared breakers: asks the store, logs and counts changes.

    ``configs`` gives a provider its own settings; the others use ``default``. If the store
    cannot be reached the call is let through (logged): a breaker must not stop healthy sends.
    """

    def __init__(self, store: BreakerStore, *, default: BreakerConfig | None = None,
                 configs: Mapping[str, BreakerConfig] | None = None,
                 logger: logging.Logger | None = None, history: int = 100) -> None:
        self.store = store
        self.default = default or BreakerConfig()
        self.configs = dict(configs or {})
        self.transitions: dict[tuple[str, BreakerState], int] = {}
        """How many times each breaker moved to each state, counted by this process."""
        self.recent: deque[Transition] = deque(maxlen=history)
        """The last state changes this process caused, oldest first."""
        self._log = logger or _log
        self._seen: dict[str, None] = dict.fromkeys(self.configs)

    def config(self, name: str) -> BreakerConfig:
        return self.configs.get(name, self.default)

    async def allow(self, name: str) -> Permit:
        """May ``name`` be called now? A trial permit must be given back to :meth:`record`."""
        self._seen[name] = None
        try:
            permit = await self.store.allow(name, self.config(name))
        except Exception as exc:  # the breaker is a safeguard, not a dependency of sending
            self._log.warning("breaker of provider %r unavailable (%r); letting the call "
                              "through", name, exc)
            return Permit(BreakerState.CLOSED, True)
        if permit.transition is not None:
            self._changed(permit.transition)
        return permit

    async def record(self, name: str, permit: Permit, *, ok: bool) -> Transition | None:
        """Count one call's outcome; returns the state change it caused, if any."""
        try:
            change = await self.store.record(name, self.config(name), ok, trial=permit.trial,
                                             round=permit.round)
        except Exception as exc:  # as in allow: losing one count beats losing the send
            self._log.warning("breaker of provider %r could not count a call (%r)", name, exc)
            return None
        if change is not None:
            self._changed(change)
        return change

    async def states(self) -> dict[str, BreakerState]:
        """The current state of every breaker configured or asked about by this process."""
        return {name: await self.store.state(name) for name in self._seen}

    def _changed(self, change: Transition) -> None:
        key = (change.name, change.new)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.recent.append(change)
        self._log.warning("%s", self.describe(change))

    def describe(self, change: Transition) -> str:
        """One line for people: what changed and what happens now."""
        config, head = self.config(change.name), f"breaker of provider {change.name!r}"
        if change.new is BreakerState.HALF_OPEN:
            return f"{head} half-opened: letting {config.half_open_calls} trial call(s) through"
        if change.new is BreakerState.CLOSED:
            return f"{head} closed: {config.half_open_calls} trial call(s) succeeded"
        if change.old is BreakerState.HALF_OPEN:
            return f"{head} reopened: a trial call failed; failing over for {config.open_s:g}s"
        return (f"{head} opened: {change.failures} of {change.calls} calls failed in "
                f"{config.window_s:g}s; failing over for {config.open_s:g}s")


class FailoverProvider:
    """Sends over the first provider whose breaker allows it, failing over on its failures.

    ``providers`` are one channel's, in order of preference, with distinct names (each name is
    a breaker). ``send`` never raises; its result names the provider that actually sent.
    """

    def __init__(self, providers: Sequence[Provider], breakers: CircuitBreakers, *,
                 name: str | None = None) -> None:
        if not providers:
            raise ConfigurationError("FailoverProvider needs at least one provider")
        channels = sorted({p.channel for p in providers})
        if len(channels) > 1:
            raise ConfigurationError(f"failover providers must share one channel, got "
                                     f"{', '.join(channels)}: build one FailoverProvider each")
        names = [p.name for p in providers]
        if len(set(names)) < len(names):
            raise ConfigurationError(f"failover providers need distinct names (each has its "
                                     f"own breaker), got {names}")
        self.providers = tuple(providers)
        self.breakers = breakers
        self.channel = providers[0].channel
        self.name = name or f"{self.channel}-failover"

    @property
    def idempotent(self) -> bool:
        """A repeated send is safe only if every provider it may go to deduplicates."""
        return all(getattr(p, "idempotent", False) for p in self.providers)

    async def send(self, delivery: Delivery) -> SendResult:
        waits: list[tuple[str, float]] = []
        failed: SendResult | None = None
        for provider in self.providers:
            permit = await self.breakers.allow(provider.name)
            if not permit.allowed:
                waits.append((provider.name, permit.retry_after))
                continue
            result = await guarded(provider, delivery)
            against = result.failure is not None and provider_at_fault(result.failure)
            await self.breakers.record(provider.name, permit, ok=not against)
            if not against:
                return result  # sent, or failed for the message's own reasons
            failed = result
            maybe_sent = result.failure is not None and result.failure.maybe_delivered
            if maybe_sent and not getattr(provider, "idempotent", False):
                break  # another account could deliver it a second time: let the caller decide
        return failed if failed is not None else self._all_open(delivery, waits)

    def _all_open(self, delivery: Delivery, waits: list[tuple[str, float]]) -> SendResult:
        soonest = min(wait for _, wait in waits)
        when = ", ".join(f"{name!r} in {wait:.1f}s" for name, wait in waits)
        return Stopwatch(self.name, delivery).failed(Failure(
            TRANSIENT, f"every {self.channel} provider's breaker is open; they may be tried "
            f"again: {when}", code="breaker_open", retry_after=soonest))

    async def aclose(self) -> None:
        """Close every provider this one fails over between."""
        for provider in self.providers:
            await provider.aclose()
