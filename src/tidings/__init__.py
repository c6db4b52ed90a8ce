"""tidings: notification pipelines on Redis Streams and PostgreSQL."""

from tidings.agent import Agent
from tidings.app import App
from tidings.batch import Batch
from tidings.errors import (
    AppLoadError,
    ConfigurationError,
    ConnectionFailed,
    EmbeddedServerError,
    MigrationsPending,
    PartlyPublished,
    PayloadError,
    Reject,
    Retry,
    Signal,
    TidingsError,
    UnknownTopic,
)
from tidings.message import Envelope, Message, Priority
from tidings.settings import Settings
from tidings.topic import Topic
from tidings.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "App",
    "AppLoadError",
    "Batch",
    "ConfigurationError",
    "ConnectionFailed",
    "EmbeddedServerError",
    "Envelope",
    "Message",
    "MigrationsPending",
    "PartlyPublished",
    "PayloadError",
    "Priority",
    "Reject",
    "Retry",
    "Settings",
    "Signal",
    "TidingsError",
    "Topic",
    "UnknownTopic",
    "Worker",
    "__version__",
]
