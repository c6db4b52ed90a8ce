"""The notification contract: what a producer publishes, validated fast and explained clearly.

Validation errors name the field path and the reason (``recipient.phone: Value error, …``);
:func:`parse_notification` turns them into one :class:`~tidings.errors.PayloadError` line.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal, TypeAlias
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tidings.errors import PayloadError
from tidings.message import Priority, new_id
from tidings.topic import describe_validation

Channel: TypeAlias = Literal["email", "sms", "push", "webhook"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "webhook")

_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# BCP 47 subset: language, optional script, optional region (``en``, ``pt-BR``, ``zh-Hant-TW``,
# ``es-419``). Case-insensitive on input; canonicalised to ``ll-Ssss-RR``.
_LOCALE = re.compile(r"([a-z]{2,3})(?:[-_]([a-z]{4}))?(?:[-_]([a-z]{2}|[0-9]{3}))?", re.I)
# Deliberately simple: one '@', no whitespace, a dotted domain, RFC 5321 length limits.
# pydantic's EmailStr (email-validator) costs ~50-100 µs per address; this ~1 µs, and the
# SMTP server is the real judge of deliverability anyway.
_EMAIL = re.compile(r"[^@\s<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
                    r"\.[A-Za-z]{2,63}")
# A delivery's address is part of the ledger's unique index, and a PostgreSQL btree entry
# holds at most 2704 bytes: a longer token could never be recorded, and the one statement
# that claims a batch would fail for every notification in it (2026-12-04). Real tokens are
# far shorter: APNs 64 hex digits, FCM ~160 characters, web-push endpoints a few hundred.
MAX_TOKEN = 2048
_TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN}}}")
# The type is a dimension of the analytics roll-ups' primary key, beside the tenant (a key):
# bounded, as keys are, to keep that key well within the limit.
MAX_TYPE = 200
MAX_KEY = 200
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY}}}")


class NotificationPriority(StrEnum):
    """How urgent a notification is; ``critical`` also bypasses quiet hours."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def lane(self) -> Priority:
        """The transport lane: critical and high share the high lane."""
        return _LANES[self]


_LANES = {
    NotificationPriority.CRITICAL: Priority.HIGH,
    NotificationPriority.HIGH: Priority.HIGH,
    NotificationPriority.NORMAL: Priority.NORMAL,
    NotificationPriority.LOW: Priority.LOW,
}


def check_type(value: str) -> str:
    if len(value) > MAX_TYPE:
        raise ValueError(f"a type is at most {MAX_TYPE} characters")
    if not _TYPE.fullmatch(value):
        raise ValueError(
            "use dotted lowercase words such as 'order.shipped' (letters, digits, '_')"
        )
    return value


def check_e164(value: str) -> str:
    if not _E164.fullmatch(value):
        raise ValueError("not an E.164 phone number; write '+' then country code and number, "
                         "digits only, e.g. '+14155550123'")
    return value


def check_email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("not an email address such as 'ada@example.com'")
    return value


def canonical_locale(value: str) -> str:
    """``pt_br`` → ``pt-BR``, ``zh-hant-tw`` → ``zh-Hant-TW``; ValueError if not a locale."""
    match = _LOCALE.fullmatch(value)
    if match is None:
        raise ValueError("not a locale; use a language code with an optional region, "
                         "e.g. 'en' or 'pt-BR'")
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


@cache
def _zones() -> frozenset[str]:
    # Read once (~50 ms): the IANA names this machine knows. ZoneInfo() alone would also
    # accept file names such as 'localtime' that mean different things on different hosts.
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone name such as 'Europe/Lisbon'")
    return value


def check_token(value: str) -> str:
    if len(value) > MAX_TOKEN:
        raise ValueError(f"a device token is at most {MAX_TOKEN} characters; this one has"
                         f" {len(value)}")
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"a device token is 1-{MAX_TOKEN} printable characters without spaces")
    return value


def check_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise ValueError(f"use 1-{MAX_KEY} printable characters without spaces")
    return value


def check_channels(value: Any) -> Any:
    """``"auto"``, one channel name, or a non-empty list of distinct channel names."""
    if value == "auto" or value == ["auto"]:
        return "auto"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("give a list of channels or 'auto'")
    if not value:
        raise ValueError("name at least one channel, or 'auto'")
    for name in value:
        if name not in CHANNELS:
            raise ValueError(f"unknown channel {name!r}; use {', '.join(CHANNELS)} or 'auto'")
    if len(set(value)) != len(value):
        raise ValueError("a channel is listed twice")
    return list(value)


_NUL = "contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it"


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError(_NUL)
    return value


def check_data(value: dict[str, Any]) -> dict[str, Any]:
    """Template data: any JSON, but no NUL character in a key or a string anywhere in it."""
    path = _nul_in(value, "data")
    if path is not None:
        raise ValueError(f"{path} {_NUL}")
    return value


def _nul_in(value: Any, path: str) -> str | None:
    """The path of the first key or string holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if "\x00" in str(key):
                return here
            found = _nul_in(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_in(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


Phone = Annotated[str, AfterValidator(check_e164)]
Text = Annotated[str, AfterValidator(check_text)]
Data = Annotated[dict[str, Any], AfterValidator(check_data)]
Email = Annotated[str, AfterValidator(check_email)]
Locale = Annotated[str, AfterValidator(canonical_locale)]
TimeZone = Annotated[str, AfterValidator(check_timezone)]
DeviceToken = Annotated[str, AfterValidator(check_token)]
Key = Annotated[str, AfterValidator(check_key)]
Channels = Annotated[list[Channel] | Literal["auto"], BeforeValidator(check_channels)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipient(_Model):
    """Who receives it, and every address they can be reached at."""

    user_id: Key
    email: Email | None = None
    phone: Phone | None = None
    # A token given twice is one device: one leg, sent once.
    device_tokens: Annotated[tuple[DeviceToken, ...],
                             AfterValidator(lambda tokens: tuple(dict.fromkeys(tokens)))] = (
        Field((), max_length=100))
    timezone: TimeZone | None = None
    locale: Locale = "en"

    def addresses(self, channel: Channel) -> tuple[str, ...]:
        """Where ``channel`` delivers to this recipient; empty if it cannot reach them.

        A webhook goes to an endpoint configured on the provider, so it always has one leg,
        addressed by the user id.
        """
        if channel == "email":
            return (self.email,) if self.email else ()
        if channel == "sms":
            return (self.phone,) if self.phone else ()
        if channel == "push":
            return self.device_tokens
        return (self.user_id,)


_ADDRESS_FIELD: dict[Channel, str] = {
    "email": "email", "sms": "phone", "push": "device_tokens", "webhook": "user_id",
}


class Content(_Model):
    """Pre-rendered content; each channel uses the parts it needs (SMS: body only)."""

    body: Text = Field(min_length=1)
    subject: Text | None = None
    html: Text | None = None
    title: Text | None = None


class Notification(_Model):
    """One notification as a producer publishes it.

    Either ``template`` (with ``data``) or pre-rendered ``content`` — exactly one.
    ``channels`` is a list of channels or ``"auto"`` (routing decides). Every channel named
    explicitly needs an address on the recipient.
    """

    type: Annotated[str, AfterValidator(check_type)]
    channels: Channels = "auto"
    recipient: Recipient
    template: Key | None = None
    data: Data = Field(default_factory=dict)
    content: Content | None = Field(None, validate_default=True)
    priority: NotificationPriority = NotificationPriority.NORMAL
    tenant: Key = "default"
    idempotency_key: Key = Field(default_factory=new_id)
    send_at: AwareDatetime | None = None

    # Field validators (not a model validator) so that each error names its field path.
    @field_validator("recipient")
    @classmethod
    def _reachable(cls, recipient: Recipient, info: ValidationInfo) -> Recipient:
        channels = info.data.get("channels", "auto")
        if channels != "auto":
            for channel in channels:
                if not recipient.addresses(channel):
                    raise ValueError(f"channel {channel!r} needs recipient."
                                     f"{_ADDRESS_FIELD[channel]}, which is missing")
        return recipient

    @field_validator("content")
    @classmethod
    def _one_source(cls, content: Content | None, info: ValidationInfo) -> Content | None:
        if "template" not in info.data:
            return content  # the template itself failed; that error is enough
        template = info.data["template"]
        if (template is None) == (content is None):
            raise ValueError("give exactly one of 'template' (with 'data') or 'content'")
        if content is not None and info.data.get("data"):
            raise ValueError("'data' is only used with a 'template'; render it into 'content'")
        return content

    @property
    def lane(self) -> Priority:
        return self.priority.lane


def parse_notification(data: bytes | str | dict[str, Any]) -> Notification:
    """Validate JSON or a dict; PayloadError naming each failing field path and why."""
    try:
        if isinstance(data, dict):
            return Notification.model_validate(data)
        return Notification.model_validate_json(data)
    except ValidationError as exc:
        raise PayloadError(f"invalid notification: {describe_validation(exc)}") from None
