"""SQLAlchemy Core tables of tidings, all in one MetaData and none bound to a schema.

The connection's ``search_path`` decides the schema (see :func:`tidings.database.create_engine`).
"""

from tidings.tables.analytics import (
    analytics_watermarks,
    delivery_stats_day,
    delivery_stats_hour,
    delivery_stats_minute,
)
from tidings.tables.common import metadata
from tidings.tables.consumers import consumer_groups, consumer_instances
from tidings.tables.dead_letters import dead_letter_replays, dead_letters
from tidings.tables.events import delivery_events
from tidings.tables.ledger import deliveries, ledger_flushes, messages
from tidings.tables.parked import parked_retries
from tidings.tables.preferences import preferences
from tidings.tables.queues import queue_configs
from tidings.tables.schedules import outbox, schedule_fires, schedules
from tidings.tables.templates import templates

__all__ = [
    "analytics_watermarks",
    "consumer_groups",
    "consumer_instances",
    "dead_letter_replays",
    "dead_letters",
    "deliveries",
    "delivery_events",
    "delivery_stats_day",
    "delivery_stats_hour",
    "delivery_stats_minute",
    "ledger_flushes",
    "messages",
    "metadata",
    "outbox",
    "parked_retries",
    "preferences",
    "queue_configs",
    "schedule_fires",
    "schedules",
    "templates",
]
