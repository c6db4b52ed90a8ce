"""Channel senders: the Provider seam, the four real providers, fan-out / fallback, and circuit
breakers with provider failover."""

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
from tidings.sinks.breaker import (
    BreakerConfig,
    BreakerState,
    MemoryBreakerStore,
    RedisBreakerStore,
)
from tidings.sinks.email_smtp import SmtpEmail, SmtpFactory, smtp_factory
from tidings.sinks.failover import CircuitBreakers, FailoverProvider, provider_at_fault
from tidings.sinks.orchestration import Dispatch, fall_back, fan_out, send_channel
from tidings.sinks.providers import build_providers
from tidings.sinks.push_fcm import FcmPush, TokenSource, static_token
from tidings.sinks.settings import ProviderSettings
from tidings.sinks.sms_twilio import TwilioSms
from tidings.sinks.webhook import InvalidSignature, SignedWebhook, sign, verify_signature

__all__ = [
    "PERMANENT",
    "TRANSIENT",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreakers",
    "Delivery",
    "Dispatch",
    "FailoverProvider",
    "Failure",
    "FailureKind",
    "FcmPush",
    "InvalidSignature",
    "MemoryBreakerStore",
    "NoopProvider",
    "Provider",
    "ProviderSettings",
    "RedisBreakerStore",
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
    "provider_at_fault",
    "send_channel",
    "sign",
    "smtp_factory",
    "static_token",
    "verify_signature",
]
