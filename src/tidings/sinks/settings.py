"""Provider credentials and endpoints, read once from ``TIDINGS_*`` variables and passed down."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tidings.notification import Channel
from tidings.settings import read_env


class ProviderSettings(BaseSettings):
    """Where each channel's provider lives and how to authenticate to it.

    ``TIDINGS_SMTP_HOST``, ``TIDINGS_TWILIO_ACCOUNT_SID``, ``TIDINGS_FCM_PROJECT_ID``,
    ``TIDINGS_WEBHOOK_URL``… A provider whose settings are missing is simply not built.
    """

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", frozen=True, extra="ignore")

    # email (SMTP)
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = Field(True, description="Upgrade with STARTTLS (port 587)")
    smtp_implicit_tls: bool = Field(False, description="TLS from the first byte (port 465)")
    smtp_ca_file: str | None = Field(None, description="CA bundle to trust for the server")
    smtp_from: str = "tidings@localhost"
    smtp_pool_size: int = Field(2, ge=1, le=64, description="Connections kept open and reused")
    smtp_timeout: float = Field(10.0, gt=0)

    # SMS (Twilio-compatible REST)
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = Field(None, description="Sender number (E.164)")
    twilio_messaging_service_sid: str | None = None

    # push (FCM HTTP v1-compatible)
    fcm_base_url: str = "https://fcm.googleapis.com"
    fcm_project_id: str | None = None
    fcm_access_token: SecretStr | None = Field(None, description="OAuth 2 bearer token")

    # signed webhook
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    # a second SMS account to fail over to while the first one's breaker is open
    twilio_failover_base_url: str | None = Field(None, description="Default: twilio_base_url")
    twilio_failover_account_sid: str | None = None
    twilio_failover_auth_token: SecretStr | None = None
    twilio_failover_from: str | None = Field(None, description="Default: twilio_from")

    inline_channels: Annotated[frozenset[Channel], NoDecode] = Field(
        frozenset(),
        description="Channels sent by the intake stage itself, with no stream hop between"
        " (comma-separated, e.g. push,webhook): faster, but a slow provider there holds up"
        " intake for every channel",
    )

    http_timeout: float = Field(10.0, gt=0, description="Seconds per HTTP provider request")
    breaker: dict[str, float] = Field(
        default_factory=dict,
        description='Circuit breaker settings as JSON, e.g. {"open_s": 30, "min_calls": 20}',
    )

    @field_validator("inline_channels", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> ProviderSettings:
        """Read ``TIDINGS_*`` variables; a bad value is a ConfigurationError naming it."""
        return read_env(cls, "provider settings", **overrides)
