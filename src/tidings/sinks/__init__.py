"""Channel senders: the Provider seam, the four real providers, and fan-out / fallback."""

from tidings.sinks.base import (
    PERMANENT,
    TRANSIENT,
    Delivery,
    Failure,
    FailureKind,
    NoopProvider,
    Provider,
    SendResult,
    deliveries,
    leg_key,
)
from tidings.sinks.email_smtp import SmtpEmail, SmtpFactory, smtp_factory
from tidings.sinks.orchestration import Dispatch, fall_back, fan_out, send_channel
from tidings.sinks.providers import build_providers
from tidings.sinks.push_fcm import FcmPush, TokenSource, static_token
from tidings.sinks.settings import ProviderSettings
from tidings.sinks.sms_twilio import TwilioSms
from tidings.sinks.webhook import InvalidSignature, SignedWebhook, sign, verify_signature

__all__ = [
    "PERMANENT",
    "TRANSIENT",
    "Delivery",
    "Dispatch",
    "Failure",
    "FailureKind",
    "FcmPush",
    "InvalidSignature",
    "NoopProvider",
    "Provider",
    "ProviderSettings",
    "SendResult",
    "SignedWebhook",
    "SmtpEmail",
    "SmtpFactory",
    "TokenSource",
    "TwilioSms",
    "build_providers",
    "deliveries",
    "fall_back",
    "fan_out",
    "leg_key",
    "send_channel",
    "sign",
    "smtp_factory",
    "static_token",
    "verify_signature",
]
