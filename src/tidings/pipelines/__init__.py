"""Pipelines: declarative graphs of stages wired by topics, and the notification pipeline's
building blocks — templates, recipient preferences, routing rules and the delivery ledger."""

from tidings.pipelines.graph import GraphError, Item, Pipeline, Stage, Step
from tidings.pipelines.ledger import LedgerError, LedgerWriter, MessageRecord
from tidings.pipelines.preferences import (
    Decision,
    Outcome,
    Preferences,
    PreferencesError,
    PreferenceStore,
    QuietHours,
    decide,
)
from tidings.pipelines.routing import Route, Router, RoutingError, Rule, matches
from tidings.pipelines.templates import (
    Renderer,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateStore,
)

__all__ = [
    "Decision",
    "GraphError",
    "Item",
    "LedgerError",
    "LedgerWriter",
    "MessageRecord",
    "Outcome",
    "Pipeline",
    "PreferenceStore",
    "Preferences",
    "PreferencesError",
    "QuietHours",
    "Renderer",
    "Route",
    "Router",
    "RoutingError",
    "Rule",
    "Stage",
    "Step",
    "Template",
    "TemplateError",
    "TemplateNotFound",
    "TemplateStore",
    "decide",
    "matches",
]
