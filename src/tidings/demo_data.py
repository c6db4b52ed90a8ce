"""What `tidings demo` publishes — templates, recipients, their preferences and notifications —
and the faults its local providers inject.

Deterministic for a seed (which requests a fault hits is not: that depends on timing). Most
traffic goes to the cheap HTTP channels (webhook, push, SMS); e-mail (SMTP with STARTTLS, the
slowest provider) gets a small share, so 10 000 notifications finish in about a minute on two
cores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tidings.capture.http import Endpoint, Fault, HttpCapture
from tidings.notification import Channel, Notification, Recipient
from tidings.pipelines.preferences import Preferences, QuietHours
from tidings.pipelines.routing import Rule
from tidings.retry import RetryPolicy

INVALID_PHONE = "+15005550001"  # Twilio's magic 'not a valid phone number'
# The demo's own retry policy, for every notification type: fast, so that a run takes seconds
# (the seeded queues back off from 1 s and try 8 times).
RETRY = RetryPolicy("exponential", base=0.05, factor=2.0, max_delay=0.2, max_attempts=4)
# The providers' HTTP read timeout in the demo; an injected delay longer than it is a timeout.
READ_TIMEOUT_S = 1.0
ZONES = ("Europe/Lisbon", "Europe/Berlin", "America/New_York", "America/Sao_Paulo",
         "Asia/Tokyo", "Australia/Sydney", "UTC")
# pt-BR falls back to pt, es-MX and ja to the default locale (en): no template of theirs.
LOCALES = ("en", "en", "en-GB", "de", "fr", "pt-BR", "es-MX", "ja")
TYPES = ("order.shipped", "account.login", "billing.invoice", "promo.weekly")

RULES = (
    Rule("account.*", channels=("push", "sms", "webhook"), name="account-alerts"),
    Rule("order.*", channels=("push", "webhook"), name="orders"),
    Rule("billing.*", channels=("webhook", "email"), name="billing"),
    Rule("promo.*", channels=("webhook",), deny=("sms",), name="no-sms-promos"),
)

_DATA: dict[str, dict[str, Any]] = {
    "order.shipped": {"order_id": "A-1042", "carrier": "DHL", "eta": "Tuesday"},
    "account.login": {"device": "Firefox on Linux", "city": "Lisbon"},
    "billing.invoice": {"invoice": "INV-7", "amount": "49.00", "currency": "EUR"},
    "promo.weekly": {"headline": "Autumn sale", "discount": 20},
}
_BODIES = {
    "order.shipped": ("Order {{ order_id }} shipped",
                      "Hi {{ recipient.user_id }}, order {{ order_id }} left with {{ carrier }};"
                      " it arrives {{ eta }}."),
    "account.login": ("New sign-in", "New sign-in from {{ device }} near {{ city }}."),
    "billing.invoice": ("Invoice {{ invoice }}",
                        "Invoice {{ invoice }}: {{ amount }} {{ currency }} is due."),
    "promo.weekly": ("{{ headline }}", "{{ headline }}: {{ discount }}% off this week."),
}
_TRANSLATED = {
    "de": ("Neuigkeiten: {{ type }}", "Hallo {{ recipient.user_id }}, es gibt Neuigkeiten."),
    "fr": ("Du nouveau : {{ type }}", "Bonjour {{ recipient.user_id }}, du nouveau pour vous."),
    "pt": ("Novidades: {{ type }}", "Olá {{ recipient.user_id }}, temos novidades."),
}


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    channel: Channel
    locale: str
    body: str
    subject: str | None = None
    title: str | None = None


def templates() -> list[TemplateSpec]:
    """Every type on every channel in English; e-mail and push also in de, fr and pt."""
    specs: list[TemplateSpec] = []
    for name, (subject, body) in _BODIES.items():
        for channel in ("email", "sms", "push", "webhook"):
            specs.append(_spec(name, channel, "en", subject, body))
            if channel in ("email", "push"):
                for locale, (t_subject, t_body) in _TRANSLATED.items():
                    specs.append(_spec(name, channel, locale, t_subject, t_body))
    return specs


def _spec(name: str, channel: Channel, locale: str, subject: str, body: str) -> TemplateSpec:
    return TemplateSpec(name, channel, locale, body,
                        subject=subject if channel == "email" else None,
                        title=subject if channel == "push" else None)


@dataclass(frozen=True)
class Population:
    recipients: list[Recipient]
    preferences: list[Preferences]


def population(users: int, now: datetime, seed: int = 0) -> Population:
    """``users`` recipients; every 10th opts out of a channel, every 10th (offset) is in quiet
    hours right now in their own zone, every 10th (offset) prefers push then SMS."""
    rng = random.Random(seed)
    recipients: list[Recipient] = []
    prefs: list[Preferences] = []
    for i in range(users):
        user = f"user-{i:05d}"
        zone = ZONES[i % len(ZONES)]
        # Permanent failures on purpose: an invalid number (Twilio 21211) for one user in 29,
        # an unregistered device token (FCM UNREGISTERED) for one in 31.
        phone = INVALID_PHONE if i % 29 == 5 else (
            None if i % 11 == 7 else f"+1415{rng.randrange(10**6, 10**7)}")
        tokens = () if i % 4 == 3 else (
            (f"invalid-{i}",) if i % 31 == 4 else (f"tok-{i}-{rng.randrange(10**9)}",))
        recipients.append(Recipient(
            user_id=user, email=f"{user}@example.com", phone=phone, device_tokens=tokens,
            timezone=zone, locale=LOCALES[rng.randrange(len(LOCALES))],
        ))
        if i % 10 == 1:
            prefs.append(Preferences(user, opted_out=frozenset({"sms" if i % 20 == 1 else "push"})))
        elif i % 10 == 2:
            prefs.append(Preferences(user, quiet_hours=_quiet_now(now, zone), timezone=zone))
        elif i % 10 == 3:
            prefs.append(Preferences(user, channel_order=("push", "sms", "email")))
    return Population(recipients, prefs)


def _quiet_now(now: datetime, zone: str) -> QuietHours:
    """A window from an hour ago to two hours ahead, in the recipient's wall-clock time."""
    local = now.astimezone(ZoneInfo(zone))
    start = (local - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    return QuietHours(start, end)


# (share, channels): cumulative weights of the channel mix; e-mail kept small (SMTP is slow).
_MIX: tuple[tuple[float, list[Channel] | str], ...] = (
    (0.38, ["webhook"]), (0.22, ["push"]), (0.16, ["sms"]), (0.05, ["email"]),
    (0.03, ["push", "webhook"]), (0.16, "auto"),
)
_PRIORITIES = (("critical", 0.03), ("high", 0.12), ("normal", 0.70), ("low", 0.15))


def notifications(count: int, people: Population, now: datetime, seed: int = 0,
                  ) -> list[Notification]:
    """``count`` notifications; a few are bad on purpose (data their template cannot render)
    and a few are scheduled two seconds ahead."""
    rng = random.Random(seed + 1)
    out: list[Notification] = []
    bad_every = max(50, count // 20)  # ~0.5% fail to render, at least one in a small run
    for i in range(count):
        recipient = people.recipients[rng.randrange(len(people.recipients))]
        kind = TYPES[rng.randrange(len(TYPES))]
        channels = _channels(rng.random(), recipient)
        data = dict(_DATA[kind])
        if i % bad_every == bad_every // 2:
            data = {}  # the template needs fields this data lacks: a recorded failure
        fields: dict[str, Any] = {
            "type": kind, "channels": channels, "recipient": recipient, "template": kind,
            "data": data, "priority": "low" if kind == "promo.weekly" else _priority(rng.random()),
        }
        if i % 200 == 100:
            fields["send_at"] = now.astimezone(UTC) + timedelta(seconds=2)
        out.append(Notification.model_validate(fields))
    return out


def _channels(draw: float, recipient: Recipient) -> list[Channel] | str:
    choice = _MIX[-1][1]
    for share, channels in _MIX:
        if draw < share:
            choice = channels
            break
        draw -= share
    if isinstance(choice, str):
        return choice  # auto
    # Explicit channels must be reachable (the contract refuses them otherwise): fall back
    # to the webhook, which every recipient has.
    reachable = [c for c in choice if recipient.addresses(c)]
    return reachable or ["webhook"]


def _priority(draw: float) -> str:
    for name, share in _PRIORITIES:
        draw -= share
        if draw < 0:
            return name
    return "normal"


@dataclass(frozen=True)
class InjectedFault:
    """One kind of misbehaviour asked of a capture endpoint, and how often it happened."""

    endpoint: Endpoint
    what: str
    rule: Fault
    planned: int

    @property
    def fired(self) -> int:
        return self.planned - (self.rule.times or 0)


def inject_faults(http: HttpCapture, count: int) -> list[InjectedFault]:
    """Transient faults, spread over the run, that the next attempt gets past (each strikes a
    leg at most once, so none is exhausted by them): 503 / 429 / 502 replies, garbage 200
    replies and SMS replies slower than the read timeout. (The permanent ones are in the data:
    invalid numbers, unregistered device tokens.)"""
    n = max(2, count // 100)
    plan: list[tuple[Endpoint, str, dict[str, Any]]] = [
        ("push", "HTTP 503 UNAVAILABLE", {"status": 503, "times": n, "rate": 0.1}),
        ("sms", "HTTP 429 Too Many Requests", {"status": 429, "times": n, "rate": 0.1}),
        ("webhook", "HTTP 502", {"status": 502, "times": n, "rate": 0.05}),
        ("sms", "HTTP 200 with an HTML body", {
            "status": 200, "body": b"<html>upstream proxy error</html>", "times": n // 2 or 1,
            "rate": 0.05}),
        ("push", "HTTP 200 with a body that is not JSON", {
            "status": 200, "body": b"not json at all", "times": n // 2 or 1, "rate": 0.05}),
        ("sms", f"no reply within {READ_TIMEOUT_S:g} s", {
            "status": None, "latency_s": READ_TIMEOUT_S + 0.5, "times": 2, "rate": 0.05}),
    ]
    return [InjectedFault(endpoint, what, http.fault(endpoint, again=False, **options),
                          options["times"]) for endpoint, what, options in plan]
