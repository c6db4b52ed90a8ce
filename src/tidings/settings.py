"""Settings: read once from the environment (``TIDINGS_*``) and passed down explicitly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from tidings.errors import ConfigurationError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

S = TypeVar("S", bound=BaseSettings)


def read_env(cls: type[S], what: str, **overrides: object) -> S:
    """Build a settings class from ``TIDINGS_*``; a bad value is one ConfigurationError naming
    the variable (``what`` says which settings, e.g. "provider settings")."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"TIDINGS_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid {what}: {problems}") from None
    except SettingsError as exc:  # a list or tuple variable that is not JSON
        raise ConfigurationError(
            f"invalid {what}: {exc}; list values are JSON, e.g. TIDINGS_LANE_WEIGHTS=[6,3,1]"
        ) from None


class Settings(BaseSettings):
    """Everything tidings can be told from outside the code.

    Build it once with :meth:`from_env` (the CLI does) and hand it to :class:`tidings.App`.
    With ``redis_url`` / ``database_url`` unset, tidings starts embedded servers under ``home``.
    """

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", frozen=True, extra="ignore")

    redis_url: str | None = Field(None, description="Redis URL; unset = embedded Redis")
    database_url: str | None = Field(None, description="PostgreSQL URL; unset = embedded")
    home: Path = Field(Path.home() / ".tidings", description="Data directory of embedded servers")
    namespace: str = Field("tidings", description="Prefix of every Redis key")
    database_schema: str = Field("tidings", description="PostgreSQL schema of the tables")

    redis_pool_size: int = Field(64, ge=1)
    database_pool_size: int = Field(10, ge=1)
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection")

    partitions: int = Field(4, ge=1, le=1024, description="Default partitions of a new topic")
    batch_size: int = Field(
        200, ge=1, le=10_000,
        description="Messages read per XREADGROUP (at most; a quiet stream gives fewer)",
    )
    block_ms: int = Field(1000, ge=1, description="How long an idle read waits")
    lane_weights: tuple[int, int, int] = Field(
        (6, 3, 1), description="Share of each read given to the high, normal and low lanes"
    )
    claim_idle_ms: int = Field(30_000, ge=100, description="Idle time before reclaiming")
    lease_ttl_ms: int = Field(10_000, ge=300, description="Partition ownership lease")
    max_deliveries: int = Field(5, ge=1, description="Deliveries before a message is poison")
    max_payload_bytes: int = Field(512 * 1024, ge=1024)
    heartbeat_interval_s: float = Field(5.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0, description="Deadline for in-flight work")
    trim_interval_s: float = Field(5.0, gt=0)
    gc_threshold: int = Field(
        10_000, ge=0, description="Worker processes: allocations between young-generation"
        " garbage collections, with the start-up heap frozen (Python's default: 700); 0 leaves"
        " the collector alone",
    )
    park_after_s: float = Field(
        3600.0, gt=0, description="Retries due later than this wait in PostgreSQL, not Redis"
    )

    @field_validator("namespace", "database_schema")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use only letters, digits, '_', '.' and '-'")
        if len(value) > 63:  # PostgreSQL would cut a longer schema name short, silently
            raise ValueError(f"at most 63 characters; this one has {len(value)}")
        return value

    @field_validator("lane_weights")
    @classmethod
    def _positive_weights(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("every lane needs a weight of at least 1, or it could starve")
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read ``TIDINGS_*`` variables; a bad value is a ConfigurationError naming it."""
        return read_env(cls, "settings", **overrides)
