"""The deliver step: send each dispatch over its channel or fallback chain, exactly once in
effect, then settle what did not go out.

Every leg (message, channel, address) is claimed in the ledger ('sending') before its
provider is called (:mod:`tidings.pipelines.intents`). What failed is settled by the failure's
class: transient → retried after the policy's backoff (or the provider's Retry-After); every
provider circuit-broken → waits without using up an attempt; permanent, or out of attempts →
the legs are marked dead in the ledger and the message goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tidings import tracing
from tidings.message import REPLAY_HEADER, failing_for, last_delay, now_ms
from tidings.notification import Channel
from tidings.observability.deliveries import PipelineMetrics
from tidings.observability.logs import current_trace, trace_of
from tidings.pipelines.graph import Item
from tidings.pipelines.intents import BUSY, CLAIMED, GONE, Claim, DeliveryKey, Intents
from tidings.pipelines.ledger import DeliveryState, LedgerError, LedgerWriter
from tidings.retry import RetryPolicy
from tidings.sinks.base import PERMANENT, Delivery, Failure, Provider, SendResult, deliveries
from tidings.sinks.orchestration import guarded

if TYPE_CHECKING:
    from tidings.pipelines.notifications import Dispatch, Tally

log = logging.getLogger("tidings.sending")

BREAKER_OPEN = "breaker_open"
OUTCOME_UNKNOWN = "outcome_unknown"
NOT_SENDABLE = "not_sendable"  # no provider for the channel, or no address on the recipient
_GONE = ("not sent: its message is no longer in the ledger (retention deleted it), so nothing"
         " would stop a second send; publish it again if it is still wanted")
# Starts the ledger error of a leg whose send may or may not have happened: a plain replay
# leaves such legs dead (only --force sends them again).
UNKNOWN_PREFIX = "outcome unknown: "


@dataclass
class _Run:
    """One dispatch's way through its channels in this batch."""

    item: Item
    dispatch: Dispatch
    channels: list[Channel]
    failures: list[SendResult] = field(default_factory=list)
    delivered: bool = False
    busy: bool = False

    @property
    def goes_on(self) -> bool:
        """A fallback chain moves to its next channel while nothing was delivered."""
        return (not self.delivered and not self.busy and bool(self.channels)
                and self.dispatch.mode == "fallback")


@dataclass
class _Job:
    run: _Run
    channel: Channel
    provider: Provider
    legs: list[Delivery]


def _once(sends: list[tuple[_Job, Delivery]]) -> list[tuple[_Job, Delivery]]:
    """Each leg once: one claim answers for every copy of a leg in the wave (a message read
    twice in one batch), so a later copy's run waits instead, and finds the leg sent when it
    tries again."""
    seen: set[DeliveryKey] = set()
    once: list[tuple[_Job, Delivery]] = []
    for job, leg in sends:
        key = (job.run.dispatch.message_id, job.channel, leg.address)
        if key in seen:
            job.run.busy = True
        else:
            seen.add(key)
            once.append((job, leg))
    return once


def idempotent(provider: Provider) -> bool:
    """Whether the provider deduplicates by our idempotency key, so a send whose outcome is
    unknown may be repeated safely (providers say so with ``idempotent = True``)."""
    return bool(getattr(provider, "idempotent", False))


class Sender:
    """Delivers dispatches through the channel providers; see the module docstring."""

    def __init__(
        self,
        ledger: LedgerWriter,
        intents: Intents,
        providers: dict[Channel, Provider],
        policy_for: Callable[[Dispatch], RetryPolicy],
        *,
        concurrency: int = 32,
        busy_wait_s: float = 30.0,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.ledger = ledger
        self.intents = intents
        self.providers = providers
        self.policy_for = policy_for
        self.concurrency = concurrency
        self.busy_wait_s = busy_wait_s
        self.metrics = metrics or PipelineMetrics()

    async def deliver(self, items: list[Item], tally: Tally) -> list[Item]:
        runs = [_Run(i, i.value, list(i.value.channels)) for i in items]
        active = runs
        while active:
            await self._wave(active, tally)
            active = [run for run in active if run.goes_on]
        for run in runs:
            trace = current_trace.set(trace_of(run.item.message))
            try:
                await self._settle(run, tally)
            finally:
                current_trace.reset(trace)
        # A chain that delivered before its end this time may have left later channels' legs
        # 'failed' on an earlier attempt: they are over now.
        await self.intents.supersede([
            (run.dispatch.message_id, channel) for run in runs
            if run.delivered and run.dispatch.mode == "fallback" and _again(run)
            for channel in run.channels
        ])
        return items

    async def _wave(self, runs: list[_Run], tally: Tally) -> None:
        """Send the next channel of every run: one ledger claim, then the provider calls."""
        jobs: list[_Job] = []
        for run in runs:
            channel = run.channels.pop(0)
            job = await self._job(run, channel, tally)
            if job is not None:
                jobs.append(job)
        claims = await self.intents.claim(
            [(j.run.dispatch.message_id, j.channel, leg.address) for j in jobs for leg in j.legs]
        )
        called: set[DeliveryKey] = set()
        sends: list[tuple[_Job, Delivery]] = []
        outcomes: list[SendResult | None] = []
        try:
            for job in jobs:
                sends += await self._triage(job, claims, tally)
            sends = _once(sends)
            outcomes = [None] * len(sends)
            await self._send_all(sends, outcomes, called)
        except BaseException:  # cancelled (shutdown deadline) or broken
            await self._abandon(list(zip(sends, outcomes, strict=False)), {
                key: claim.token for key, claim in claims.items()
                if claim.token is not None and key not in called}, tally)
            raise
        results = [r for r in outcomes if r is not None]
        # Every call has ended: a record left unmade would leave its leg 'sending', later taken
        # for an outcome unknown, so the records go on if this is cancelled (shutdown deadline).
        await asyncio.shield(self._record_all(sends, results, tally))
        sent_now = {id(job) for (job, _), result in zip(sends, results, strict=True)
                    if result.ok}
        for job in jobs:
            run = job.run
            if run.dispatch.mode == "fallback":  # one delivered leg ends the chain
                run.delivered = run.delivered or id(job) in sent_now
            else:  # fan-out: every leg must have gone
                run.delivered = not run.busy and not any(
                    f.channel == job.channel for f in run.failures)

    async def _send_all(self, sends: list[tuple[_Job, Delivery]],
                        outcomes: list[SendResult | None], called: set[DeliveryKey]) -> None:
        """Call each leg's provider, at most ``concurrency`` calls at a time, and put what each
        returned in ``outcomes``. Once a call raises (or this is cancelled), no other starts,
        and the calls in flight end before the exception goes on: ``called`` then holds every
        leg whose provider was called, ``outcomes`` what each call that ended returned."""
        traced = tracing.enabled()
        pending = iter(enumerate(sends))
        broken = False

        async def sender() -> None:  # one of at most `concurrency`, taking legs in turn
            nonlocal broken
            for index, (job, leg) in pending:
                if broken:
                    return
                try:
                    outcomes[index] = await self._send(job, leg, traced, called)
                except BaseException:
                    broken = True
                    raise

        tasks = [asyncio.create_task(sender()) for _ in range(min(self.concurrency, len(sends)))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            broken = True
            await asyncio.wait(tasks)
            raise

    async def _abandon(self, known: list[tuple[tuple[_Job, Delivery], SendResult | None]],
                       unsent: dict[DeliveryKey, str], tally: Tally) -> None:
        """After a wave broke: record what the calls that ended returned (a leg sent and left
        'sending' would be taken for an outcome unknown later) — but not a failure after which
        the message may have arrived, which is one — and give back the legs claimed and never
        called (their tokens in ``unsent``)."""
        ended = [(send, result) for send, result in known if result is not None
                 and not (result.failure is not None and result.failure.maybe_delivered)]
        try:
            if ended:
                await asyncio.shield(self._record_all(
                    [send for send, _ in ended], [result for _, result in ended], tally))
        except Exception as exc:  # the rows stay buffered for a later flush
            log.error("could not record %d delivery outcomes of a broken batch (%s: %s)",
                      len(ended), type(exc).__name__, exc)
        finally:
            await self.intents.release(unsent)

    async def _send(self, job: _Job, leg: Delivery, traced: bool,
                    called: set[DeliveryKey]) -> SendResult:
        # What the provider logs names the message (the sender task's own context).
        trace = trace_of(job.run.item.message)
        current_trace.set(trace)
        # From here its outcome may be unknown.
        called.add((job.run.dispatch.message_id, job.channel, leg.address))
        if not traced:
            return await guarded(job.provider, leg)
        with tracing.span(f"tidings.send {job.channel}", trace, {
            "tidings.message_id": job.run.dispatch.message_id,
            "tidings.channel": job.channel, "tidings.provider": job.provider.name,
            "tidings.attempt": job.run.item.message.envelope.attempt,
        }):
            return await guarded(job.provider, leg)

    async def _record_all(self, sends: list[tuple[_Job, Delivery]],
                          results: list[SendResult], tally: Tally) -> None:
        """Record every outcome, even if a flush fails on the way (the rows stay buffered):
        a send whose 'sent' is lost would look like an outcome unknown later."""
        done_ms = now_ms()
        unwritten: LedgerError | None = None
        for (job, _), result in zip(sends, results, strict=True):
            if _code(result) != BREAKER_OPEN:  # an open breaker made no call
                self.metrics.provider_call(result.provider, result.status,
                                           result.duration_ms / 1000)
            try:
                await self._record(job.run, result, tally, done_ms)
            except LedgerError as exc:
                unwritten = unwritten or exc
        if unwritten is not None:
            raise unwritten

    async def _job(self, run: _Run, channel: Channel, tally: Tally) -> _Job | None:
        n = run.dispatch.notification
        provider = self.providers.get(channel)
        content = run.dispatch.contents.get(channel)
        legs = list(deliveries(n, channel, content)) if content is not None else []
        if provider is not None and legs:
            return _Job(run, channel, provider, legs)
        reason = (f"no provider is configured for {channel}" if provider is None
                  else f"recipient {n.recipient.user_id!r} has no {channel} address")
        address = n.recipient.user_id
        failure = SendResult("none" if provider is None else provider.name, channel, address,
                             "", time.time(), 0.0,
                             failure=Failure(PERMANENT, reason, code=NOT_SENDABLE))
        await self._record(run, failure, tally, now_ms())
        return None

    async def _triage(
        self, job: _Job, claims: dict[DeliveryKey, Claim], tally: Tally
    ) -> list[tuple[_Job, Delivery]]:
        """The legs of ``job`` to send now; the others are settled from what the ledger says."""
        run, sends = job.run, []
        for leg in job.legs:
            state, error, _ = claims[(run.dispatch.message_id, job.channel, leg.address)]
            if state == CLAIMED or (state == "sending" and idempotent(job.provider)):
                sends.append((job, leg))
            elif state == "sent":
                run.delivered = run.delivered or run.dispatch.mode == "fallback"
                tally.count(job.channel, "already_sent")
            elif state == BUSY:
                run.busy = True
            elif state == "sending":  # its sender died mid-call: sending again could duplicate
                unknown = SendResult(
                    job.provider.name, job.channel, leg.address, leg.idempotency_key,
                    time.time(), 0.0, failure=Failure(
                        PERMANENT, UNKNOWN_PREFIX + "the worker stopped while sending it"
                        f" and {job.provider.name!r} cannot deduplicate, so it is not sent again;"
                        " replay it with --force to send anyway", code=OUTCOME_UNKNOWN),
                )
                await self._record(run, unknown, tally, now_ms())
            else:  # filtered or dead already, or gone: nothing to send or record
                why = _GONE if state == GONE else f"already {state}" + (
                    f": {error}" if error else "")
                run.failures.append(SendResult(
                    job.provider.name, job.channel, leg.address, leg.idempotency_key,
                    time.time(), 0.0, failure=Failure(PERMANENT, why, code=f"already_{state}")))
        return sends

    async def _record(self, run: _Run, result: SendResult, tally: Tally, done_ms: int) -> None:
        error = None if result.failure is None else result.failure.reason
        state: DeliveryState = "sent" if result.ok else "failed"
        await self.ledger.record_delivery(
            run.dispatch.message_id, result.channel, result.address, state,
            provider=result.provider, provider_message_id=result.provider_message_id,
            error=error, attempt=run.item.message.envelope.attempt,
            duration_ms=result.duration_ms,
        )
        tally.count(result.channel, state)
        dispatch = run.dispatch
        self.metrics.delivery(result.channel, result.provider, dispatch.notification.tenant, state)
        if result.ok:
            tally.latency(result.channel, dispatch.accepted_ms, done_ms)
            self.metrics.accepted(result.channel, result.provider,
                                  (done_ms - dispatch.accepted_ms) / 1000)
        else:
            run.failures.append(result)

    async def _settle(self, run: _Run, tally: Tally) -> None:
        """Retry, wait or dead-letter a dispatch that was not delivered."""
        if run.delivered:
            # A fallback chain went past these legs and delivered further on: they are over
            # (dead in the ledger), but the message was delivered, so it is no dead letter.
            await self._bury(run, tally)
            return
        item = run.item
        failures = run.failures = [self._unless_ambiguous(f) for f in run.failures]
        transient = [f for f in failures if f.failure is not None and f.failure.transient]
        # A retry sends again every leg still 'failed' in the ledger; one sent that failed for
        # good (an outcome unknown above all: it may have arrived) is dead before that. (One
        # not sendable is never sent, and is found so again: it is buried once, at the end.)
        final = [f for f in failures if f.failure is not None and not f.failure.transient
                 and f.failure.code != NOT_SENDABLE]
        if run.busy:
            if not await self._expired(run, self.busy_wait_s, tally):
                await self._bury(run, tally, final)
                item.retry("another worker is sending it", delay=self.busy_wait_s, count=False)
            return
        reason = "; ".join(f"{f.channel} via {f.provider}: {_reason(f)}" for f in failures)
        if transient and all(_code(f) == BREAKER_OPEN for f in transient):
            # Spread over a fifth more: the messages that met the open breaker together must
            # not all come back the moment it half-opens.
            wait = max(f.failure.retry_after or 1.0 for f in transient if f.failure)
            wait *= random.uniform(1.0, 1.2)
            if await self._expired(run, wait, tally):
                return
            await self._bury(run, tally, final)
            item.retry(reason, delay=wait, count=False, error_type=BREAKER_OPEN)
            tally.count("*", "waiting")
            self._count_retried(run, transient)
            return
        kind = "permanent"
        if transient:
            delay = self._next_delay(run, transient)
            if delay is not None:
                await self._bury(run, tally, final)
                item.retry(reason, delay=delay, policy=self.policy_for(run.dispatch),
                           error_type=_code(transient[0]))
                tally.count(transient[0].channel, "retried")
                self._count_retried(run, transient)
                return
            kind = "exhausted"
        await self._bury(run, tally)
        item.reject(reason or "nothing could be sent", kind=kind)

    def _unless_ambiguous(self, result: SendResult) -> SendResult:
        """A transient failure after which the message may have arrived (no reply) is not
        retried on a provider that cannot deduplicate: it is an outcome unknown."""
        failure = result.failure
        if failure is None or not failure.transient or not failure.maybe_delivered:
            return result
        provider = self.providers.get(result.channel)
        if provider is not None and idempotent(provider):
            return result
        return replace(result, failure=Failure(
            PERMANENT, f"{UNKNOWN_PREFIX}{failure.reason}; not retried because"
            f" {result.provider!r} cannot deduplicate; replay it with --force to send anyway",
            code=OUTCOME_UNKNOWN))

    async def _expired(self, run: _Run, wait: float, tally: Tally) -> bool:
        """Past the policy's deadline after ``wait``: the legs are dead, the message a dead
        letter (waits that use up no attempt still end at the deadline)."""
        deadline = self.policy_for(run.dispatch).deadline
        envelope = run.item.message.envelope
        if deadline is None or failing_for(envelope.headers, now_ms()) + wait <= deadline:
            return False
        await self._bury(run, tally)
        run.item.reject(f"still waiting after the {deadline:.0f}s deadline", kind="exhausted")
        return True

    async def _bury(self, run: _Run, tally: Tally,
                    failures: list[SendResult] | None = None) -> None:
        """Mark the run's failed legs (or these of them) dead: nothing will try them again."""
        for f in run.failures if failures is None else failures:
            if _code(f) not in ("already_dead", "already_filtered", "already_gone"):
                await self.ledger.record_delivery(run.dispatch.message_id, f.channel,
                                                  f.address, "dead", error=_reason(f))
                tally.count(f.channel, "dead")
                self.metrics.delivery(f.channel, f.provider,
                                      run.dispatch.notification.tenant, "dead")

    def _count_retried(self, run: _Run, transient: list[SendResult]) -> None:
        """One ``retried`` per delivery that failed transiently and will be tried again."""
        tenant = run.dispatch.notification.tenant
        for f in transient:
            self.metrics.delivery(f.channel, f.provider, tenant, "retried")

    def _next_delay(self, run: _Run, transient: list[SendResult]) -> float | None:
        envelope = run.item.message.envelope
        asked = [f.failure.retry_after for f in transient if f.failure and f.failure.retry_after]
        return self.policy_for(run.dispatch).next_delay(
            envelope.attempt,
            elapsed=failing_for(envelope.headers, now_ms()),
            previous=last_delay(envelope.headers),
            requested=max(asked) if asked else None,
        )


def _again(run: _Run) -> bool:
    """Whether an earlier attempt of this dispatch may have left ledger legs behind."""
    message = run.item.message
    return message.envelope.attempt > 1 or message.deliveries > 1 or (
        REPLAY_HEADER in message.headers)


def _code(result: SendResult) -> str | None:
    return None if result.failure is None else result.failure.code


def _reason(result: SendResult) -> str:
    return "" if result.failure is None else result.failure.reason
