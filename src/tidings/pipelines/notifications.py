"""The notification pipeline: intake (accept → route → decide → render) and per-channel delivery.

    notifications ──intake──┬─ email ──────────> notifications.email ──deliver──> provider
                            ├─ sms / push / webhook (likewise, one topic each)
                            └─ orchestration ──> notifications.orchestration ──deliver (fallback)

Intake runs its steps chained in one consumer (DESIGN.md D6); each channel has its own topic so a
slow provider only holds up its own channel. A notification whose channels are ``auto`` walks a
fallback chain on the orchestration topic. Every decision lands in the ledger: filtered (opted
out, no address, denied), delayed (quiet hours or ``send_at``: held by the scheduler in
PostgreSQL, then delivered), sent (with the provider's message id) or failed (with the reason).
A second message reusing an accepted idempotency key is not written — the first one's rows
stand — and is counted and logged instead. Nothing is dropped silently.

Run it with ``tidings worker tidings.pipelines.notifications:app`` (plus ``tidings schedules
run`` for delayed deliveries).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from tidings.app import App
from tidings.direct import DirectPool
from tidings.notification import Channel, Content, Notification
from tidings.observability.deliveries import NO_PROVIDER, PipelineMetrics
from tidings.pipelines.graph import Item, Pipeline
from tidings.pipelines.intents import DeliveryKey, Intents
from tidings.pipelines.ledger import (
    Accepted,
    DeliveryState,
    Intent,
    LedgerWriter,
    MessageRecord,
)
from tidings.pipelines.preferences import (
    Outcome,
    PreferenceLookup,
    Preferences,
    PreferenceStore,
    decide,
)
from tidings.pipelines.routing import Router, Rule
from tidings.pipelines.sending import Sender
from tidings.pipelines.templates import Renderer, TemplateError, TemplateStore
from tidings.retry import RetryPolicy
from tidings.scheduling.store import Schedules
from tidings.sinks.base import Provider
from tidings.sinks.breaker import (
    BreakerConfig,
    BreakerStore,
    MemoryBreakerStore,
    RedisBreakerStore,
)
from tidings.sinks.failover import CircuitBreakers
from tidings.sinks.providers import build_providers
from tidings.sinks.settings import ProviderSettings
from tidings.streams import RedisTransport
from tidings.topic import Topic

log = logging.getLogger("tidings.notifications")

CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "webhook")
INTAKE = "notifications"
ORCHESTRATION = "notifications.orchestration"
# Delays shorter than this are not worth a trip through the scheduler: send now.
MIN_DELAY = timedelta(seconds=1)
# How long a stopping worker waits for idempotency claims in flight before cancelling them.
CLAIMS_AT_STOP_S = 5.0


class Dispatch(BaseModel):
    """What travels from intake to delivery: the notification, rendered, with its channels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    notification: Notification
    channels: tuple[Channel, ...]
    mode: Literal["fanout", "fallback"]
    contents: dict[Channel, Content]
    accepted_ms: int

    def legs(self) -> list[DeliveryKey]:
        """(message id, channel, address) of each leg it may send."""
        recipient = self.notification.recipient
        return [(self.message_id, channel, address) for channel in self.channels
                for address in recipient.addresses(channel)]


ProviderFactory = Callable[[App], Awaitable[dict[Channel, Provider]]]


@dataclass
class Services:
    """What the steps need once connections are open; built by the app's start hook."""

    direct: DirectPool
    ledger: LedgerWriter
    templates: TemplateStore
    renderer: Renderer
    preferences: PreferenceStore
    lookup: PreferenceLookup
    schedules: Schedules
    providers: dict[Channel, Provider]
    sender: Sender
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


# Latencies kept per channel: the most recent ones only, so a long-running worker stays bounded.
KEPT_LATENCIES = 100_000


@dataclass
class Tally:
    """In-process counts and latencies, for the demo and the benchmark."""

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    # Per channel: (accepted, latency) in ms, of the last KEPT_LATENCIES legs sent.
    latencies: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)
    # When the first leg was sent (time.perf_counter()): a drain is timed from there.
    first_sent: float | None = None

    def count(self, channel: str, outcome: str, n: int = 1) -> None:
        self.outcomes[(channel, outcome)] = self.outcomes.get((channel, outcome), 0) + n
        if self.first_sent is None and outcome == "sent":
            self.first_sent = time.perf_counter()

    def latency(self, channel: str, accepted_ms: int, done_ms: int) -> None:
        kept = self.latencies.get(channel)
        if kept is None:
            kept = self.latencies[channel] = deque(maxlen=KEPT_LATENCIES)
        kept.append((accepted_ms, done_ms - accepted_ms))

    def latencies_ms(self, since_ms: float = 0.0) -> list[int]:
        """Every channel's kept latencies of notifications accepted from ``since_ms`` on."""
        return [ms for kept in self.latencies.values() for accepted, ms in kept
                if accepted >= since_ms]


def provider_client(settings: ProviderSettings) -> httpx.AsyncClient:
    """The HTTP client the providers share, with ``TIDINGS_HTTP_TIMEOUT`` on every phase."""
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=8),
                             timeout=settings.http_timeout)


async def providers_from_env(app: App) -> dict[Channel, Provider]:
    """Providers for every channel configured by TIDINGS_SMTP_* / _TWILIO_* / _FCM_* / ...,
    behind circuit breakers kept in Redis (shared by every worker process)."""
    settings = ProviderSettings.from_env()
    transport = app.transport
    store: BreakerStore = (RedisBreakerStore(transport.client, app.namespace)
                           if isinstance(transport, RedisTransport) else MemoryBreakerStore())
    breakers = CircuitBreakers(store, default=BreakerConfig.from_config(settings.breaker))
    client = provider_client(settings)
    providers = build_providers(settings, client, breakers=breakers)
    app.on_stop(lambda _: client.aclose())
    return providers


class NotificationPipeline:
    """The notification pipeline of one App: its topics, stages and services."""

    def __init__(
        self,
        app: App,
        *,
        providers: ProviderFactory = providers_from_env,
        rules: Sequence[Rule] = (),
        send_concurrency: int = 32,
        inline: Collection[Channel] | None = None,
    ) -> None:
        self.app = app
        self.router = Router(rules)
        self.tally = Tally()
        # Exported by the /metrics of any worker running one of the pipeline's stages.
        self.metrics = PipelineMetrics()
        self._providers = providers
        self._send_slots = send_concurrency
        # Channels sent by the intake stage itself; None: TIDINGS_INLINE_CHANNELS, read at start.
        self._inline_option = None if inline is None else frozenset(inline)
        self.inline: frozenset[Channel] = frozenset()
        self._services: Services | None = None
        # Give-backs of the legs claimed for batches whose accept failed (see accept).
        self._unclaiming: set[asyncio.Task[None]] = set()
        self.intake = app.topic(INTAKE, model=Notification)
        self.channel_topics = {c: app.topic(f"{INTAKE}.{c}", model=Dispatch) for c in CHANNELS}
        self.orchestration = app.topic(ORCHESTRATION, model=Dispatch)
        self.pipeline = self._graph().build()
        for stage in self.pipeline.stages:
            app.agents[f"{self.pipeline.name}.{stage}"].collectors.append(self.metrics)
        app.on_start(self._start)
        app.on_stop(self._stop)

    def _graph(self) -> Pipeline:
        graph = Pipeline(self.app, "notify")
        outputs: dict[str, Topic[Dispatch]] = {c: t for c, t in self.channel_topics.items()}
        outputs["orchestration"] = self.orchestration
        graph.stage("intake", source=self.intake, outputs=outputs,
                    steps=[self.accept, self.route, self.render, self.deliver_inline],
                    settle=self.write_ledger)
        for channel, topic in self.channel_topics.items():
            graph.stage(channel, source=topic, steps=[self.deliver], settle=self.write_ledger,
                        terminal=True)
        graph.stage("orchestration", source=self.orchestration, steps=[self.deliver],
                    settle=self.write_ledger, terminal=True)
        return graph

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the notification pipeline's app is not started")
        return self._services

    async def _start(self, app: App) -> None:
        if not app.has_database:
            return  # a producer (e.g. `tidings publish`) only needs the intake topic
        engine = app.engine
        self.inline = (self._inline_option if self._inline_option is not None
                       else ProviderSettings.from_env().inline_channels)
        templates = TemplateStore(engine)
        settings = app.settings
        direct = DirectPool.of(engine, size=settings.database_pool_size,
                               connect_timeout=settings.connect_timeout)
        ledger = LedgerWriter(direct, on_flush=self.metrics.ledger_flushed)
        providers = await self._providers(app)
        # A 'sending' row older than the reclaim idle time belongs to a worker that died.
        stale_s = settings.claim_idle_ms / 1000
        self._services = Services(
            direct=direct,
            ledger=ledger,
            templates=templates,
            renderer=Renderer(templates),
            preferences=PreferenceStore(engine),
            lookup=PreferenceLookup(direct),
            schedules=Schedules(engine),
            providers=providers,
            sender=Sender(ledger, Intents(direct, stale_after_s=stale_s), providers,
                          self.retry_policy, concurrency=self._send_slots,
                          busy_wait_s=stale_s, metrics=self.metrics),
        )

    async def _stop(self, app: App) -> None:
        services, self._services = self._services, None
        if services is None:
            return
        try:
            try:  # before the pool closes: legs claimed and never sent go to the next owner
                # One in flight may claim legs yet; one held up (by a lock, say) is cancelled,
                # which rolls it back. Then those of failed batches are given back.
                await services.ledger.claims_done(within_s=CLAIMS_AT_STOP_S)
                await asyncio.gather(*self._unclaiming, return_exceptions=True)
                await services.sender.intents.give_back()
            except Exception as exc:
                log.error("could not give back the delivery legs this worker claimed and did"
                          " not send (%s: %s); another worker will take them for an outcome"
                          " unknown", type(exc).__name__, exc)
            await services.ledger.aclose()
        finally:
            try:
                await services.direct.aclose()
            finally:
                for provider in services.providers.values():
                    await provider.aclose()

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, notification: Notification | dict[str, object]) -> str:
        """Validate and publish one notification (keyed by user, in its priority's lane)."""
        n = notification if isinstance(notification, Notification) else (
            Notification.model_validate(notification)
        )
        return await self.intake.send(n, key=n.recipient.user_id, priority=n.lane)

    async def publish_many(self, notifications: Sequence[Notification]) -> list[str]:
        """Validate all, then publish them in one round trip, each in its priority's lane.
        Nothing is published if one does not fit; if Redis refuses some, the others are
        published all the same and :class:`~tidings.errors.PartlyPublished` says which."""
        return await self.intake.send_many(
            notifications, key=lambda n: n.recipient.user_id, priority=lambda n: n.lane)

    # -- intake steps ---------------------------------------------------------------------

    async def accept(self, items: list[Item]) -> list[Item]:
        """Write each notification to the ledger; drop a second use of an idempotency key.
        The recipients' preferences, which ``route`` needs, are read at the same time, and
        the legs this stage will send itself are claimed with the notifications (see
        :mod:`tidings.pipelines.intents`)."""
        intents = self.services.sender.intents
        keys = [(i.value.tenant, i.value.recipient.user_id) for i in items]
        records = [
            MessageRecord.from_notification(
                i.message.id, INTAKE, i.value, key=i.key,
                created_at=datetime.fromtimestamp(i.message.envelope.created_ms / 1000, UTC),
            )
            for i in items
        ]
        tokens = intents.foresee(leg for i in items for leg in self._inline_legs(i))
        since = time.monotonic()
        claiming = asyncio.create_task(self.services.ledger.claim_idempotency_keys(
            records, [Intent(*leg, token) for leg, token in tokens.items()]))
        try:
            prefs = await self.services.lookup.get_pairs(keys)
            accepted = await asyncio.shield(claiming)
        except BaseException:
            # The claim goes on (coalesced with other partitions'): once it has ended, the
            # legs it may have claimed are given back, for whichever worker gets them next.
            # Not waited for here: a claim held up (by a lock, say) must not hold up a stop.
            unclaiming = asyncio.create_task(_unclaim(claiming, tokens, intents))
            self._unclaiming.add(unclaiming)
            unclaiming.add_done_callback(self._unclaiming.discard)
            raise
        intents.hold(accepted.claimed, since)
        for item, key in zip(items, keys, strict=True):
            item.attrs["preference"] = prefs.get(key)
            if item.message.id in accepted.duplicates:
                intents.forget(self._inline_legs(item))
                item.drop("duplicate idempotency key: already accepted once")
                self.tally.count("*", "duplicate")
                log.info("message %s reuses idempotency key %r of tenant %r: not sent again",
                         item.message.id, item.value.idempotency_key, item.value.tenant)
        return items

    def _inline_legs(self, item: Item) -> list[DeliveryKey]:
        """The legs of ``item`` this stage sends itself if routing keeps them: those of its
        explicitly named channels (a fan-out) that are inline and have a provider."""
        n: Notification = item.value
        if n.channels == "auto":
            return []
        providers = self.services.providers
        return [(item.message.id, channel, address) for channel in n.channels
                if channel in self.inline and channel in providers
                for address in n.recipient.addresses(channel)]

    async def _give_back(self, items: list[Item]) -> None:
        """After an intake step broke: the legs claimed with these notifications are given
        back (else only this worker could send them; any other would find them 'sending')."""
        await self.services.sender.intents.release_unsent(
            leg for item in items for leg in self._inline_legs(item))

    async def route(self, items: list[Item]) -> list[Item]:
        """Pick channels (explicit, or ``auto`` by preference / rule), honour opt-outs, quiet
        hours and ``send_at`` (with the preferences ``accept`` read)."""
        now = datetime.now(UTC)
        try:
            for item in items:
                await self._route_one(item, item.value, item.attrs["preference"], now)
        except BaseException:
            await self._give_back(items)
            raise
        return items

    async def _route_one(
        self, item: Item, n: Notification, preference: Preferences | None, now: datetime
    ) -> None:
        route = self.router.route(n, preference)
        for channel, reason in route.excluded.items():
            await self._record(item, channel, "filtered", error=reason)
        channels: list[Channel] = []
        until: datetime | None = n.send_at if n.send_at and n.send_at - now > MIN_DELAY else None
        # Quiet hours are those of when it would go out: a send_at in them waits for their end.
        going = max(now, n.send_at) if n.send_at else now
        for channel in route.channels:
            decision = decide(preference, n, channel, going)
            if decision.outcome == Outcome.SKIP:
                await self._record(item, channel, "filtered", error=decision.reason)
                continue
            if decision.outcome == Outcome.DELAY and decision.until is not None:
                until = max(until or decision.until, decision.until)
            channels.append(channel)
        if not channels:
            item.drop("no channel left to send on")
            return
        item.attrs["channels"], item.attrs["mode"] = tuple(channels), route.mode
        item.attrs["until"] = until

    async def render(self, items: list[Item]) -> list[Item]:
        """Render each channel's content; a template failure is a recorded failure."""
        try:
            return await self._render_all(items)
        except BaseException:
            await self._give_back(items)
            raise

    async def _render_all(self, items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for item in items:
            n: Notification = item.value
            contents: dict[Channel, Content] = {}
            for channel in item.attrs["channels"]:
                try:
                    contents[channel] = await self.services.renderer.render(n, channel)
                except TemplateError as exc:  # the same data fails the same way: final
                    await self._record(item, channel, "dead", error=str(exc))
            channels = tuple(c for c in item.attrs["channels"] if c in contents)
            if not channels:
                item.reject("no channel could be rendered", kind="permanent")
                out.append(item)
                continue
            out.extend(await self._dispatch(item, n, channels, contents))
        return out

    async def _dispatch(
        self, item: Item, n: Notification, channels: tuple[Channel, ...],
        contents: dict[Channel, Content],
    ) -> list[Item]:
        mode = item.attrs["mode"]
        accepted = item.message.envelope.created_ms
        legs = [channels] if mode == "fallback" else [(c,) for c in channels]
        out = []
        for leg in legs:
            dispatch = Dispatch(
                message_id=item.message.id, notification=n, channels=leg, mode=mode,
                contents={c: contents[c] for c in leg}, accepted_ms=accepted,
            )
            output = "orchestration" if mode == "fallback" else leg[0]
            until: datetime | None = item.attrs["until"]
            if until is not None:
                await self._delay(item, dispatch, output, until)
                continue
            split = item.split(dispatch)
            if mode == "fallback" or leg[0] not in self.inline:
                split.route(output)  # else it stays for deliver_inline
            out.append(split)
        if not out:
            item.drop("delayed")
            out.append(item)
        return out

    async def _delay(self, item: Item, dispatch: Dispatch, output: str, until: datetime) -> None:
        topic = self.orchestration if dispatch.mode == "fallback" else (
            self.channel_topics[dispatch.channels[0]]
        )
        await self.services.schedules.schedule_once(
            topic.name, dispatch.model_dump(mode="json"), until,
            key=item.key, priority=item.priority, name=f"delay:{item.message.id}:{output}",
        )
        # A fallback chain records only its first channel: the others get a row only if the
        # chain reaches them, as when it is not delayed (else they would stay delayed forever).
        for channel in dispatch.channels[:1]:
            await self._record(item, channel, "delayed", error=f"until {until.isoformat()}")

    async def _record(self, item: Item, channel: Channel, state: DeliveryState, *,
                      error: str | None = None) -> None:
        n: Notification = item.value
        addresses = n.recipient.addresses(channel) or (n.recipient.user_id,)
        for address in addresses:
            # Not sent now: a leg claimed with its message is ended by this record (one at a
            # time: the legs after one whose record raised stay remembered, to be given back).
            self.services.sender.intents.forget([(item.message.id, channel, address)])
            await self.services.ledger.record_delivery(
                item.message.id, channel, address, state, error=error
            )
        self.tally.count(channel, state, len(addresses))
        self.metrics.delivery(channel, NO_PROVIDER, n.tenant, state, len(addresses))

    async def write_ledger(self) -> None:
        """Write the batch's ledger rows before its messages are acked (DESIGN.md D2): a crash
        after the ack must not lose the record of what was sent, filtered or failed. The
        stage reads and runs its next batch meanwhile; rows of several batches (and stages)
        that wait for the same write go out in one flush."""
        await self.services.ledger.flush()

    # -- delivery -------------------------------------------------------------------------

    async def deliver_inline(self, items: list[Item]) -> list[Item]:
        """Send the legs of inline channels here, with no stream hop (DESIGN.md D6: a hop is
        for isolating a slow channel).

        A leg gets one try here. One that was not delivered is handed to its channel's own
        stage, which carries on as after a first try of its own: a transient failure or a wait
        is tried again there at once and then by its retry policy; a permanent one is already
        dead in the ledger, which that stage finds and dead-letters (so each channel's letters,
        replays and retries stay its own, and the notification's other legs go on regardless).
        """
        if not items:
            return items
        sender = self.services.sender
        try:
            await sender.deliver(items, self.tally)
        except BaseException:  # legs claimed with their message and not sent
            await sender.intents.release_unsent(leg for i in items for leg in i.value.legs())
            raise
        for item in items:
            dispatch: Dispatch = item.value
            if item.retrying is None and item.rejected is None:
                item.finish()
            else:
                item.retrying = item.rejected = None
                item.route(dispatch.channels[0])
        return items

    async def deliver(self, items: list[Item]) -> list[Item]:
        """Send every item through its channel's provider (or walk its fallback chain); settle
        failures by retry, wait or dead letter (see :mod:`tidings.pipelines.sending`)."""
        return await self.services.sender.deliver(items, self.tally)

    def retry_policy(self, dispatch: Dispatch) -> RetryPolicy:
        """The retry policy of a dispatch: its notification type's, else its stage's."""
        stage = "orchestration" if dispatch.mode == "fallback" else dispatch.channels[0]
        agent = self.app.agents[f"{self.pipeline.name}.{stage}"]
        return self.app.retry_policy(agent, type=dispatch.notification.type)


async def _unclaim(claiming: asyncio.Task[Accepted], tokens: dict[DeliveryKey, str],
                   intents: Intents) -> None:
    """Once the key claim of a failed accept has ended, give back the legs it may claim."""
    await asyncio.wait([claiming])
    if not claiming.cancelled():
        claiming.exception()  # retrieved: the error accept raised is the first one
    await intents.release_unsent(tokens)


def build(name: str = "notifications", **options: object) -> NotificationPipeline:
    """A new App carrying the notification pipeline (``options`` go to the pipeline)."""
    return NotificationPipeline(App(name), **options)  # type: ignore[arg-type]


pipeline = build()
app = pipeline.app
graph = pipeline.pipeline
