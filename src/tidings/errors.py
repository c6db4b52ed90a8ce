"""The one error tree of tidings, and the control-flow signals handlers raise.

    TidingsError                      every error tidings raises on purpose
    ├── ConfigurationError            settings or a URL that cannot work as given
    │   ├── pipelines.GraphError      a pipeline graph that cannot work as declared
    │   ├── pipelines.routing.RoutingError          a routing rule that cannot work
    │   ├── pipelines.preferences.PreferencesError  recipient preferences that cannot work
    │   ├── scheduling.calendar.InvalidSchedule   a bad cron expression, duration or zone
    │   ├── dlq.filters.FilterError     a dead-letter filter expression that cannot be parsed
    │   └── dlq.edits.EditError         a --set edit that cannot apply to the payload
    ├── ConnectionFailed              Redis or PostgreSQL could not be reached
    ├── MigrationsPending             the database schema is older than this code
    ├── EmbeddedServerError           the embedded Redis / PostgreSQL would not start or stop
    ├── AppLoadError                  `MODULE:APP` could not be imported or is not an App
    ├── UnknownTopic                  a topic name nobody declared
    ├── scheduling.schedule.UnknownSchedule   a schedule name that does not exist
    ├── PayloadError                  a payload that is not JSON, fails the schema or is too big
    ├── PartlyAdded                   some entries of one pipelined append landed, some did not
    ├── PartlyPublished               some messages of one batch were published, some were not
    ├── publishing.PublishIncomplete  `tidings publish` refused or cut off: says what to send again
    ├── pipelines.templates.TemplateError   a template that is missing or fails to render
    │   └── TemplateNotFound
    ├── pipelines.ledger.LedgerError  ledger rows that could not be written (says if retained)
    ├── sinks.webhook.InvalidSignature   a webhook body whose signature does not verify
    ├── capture.http.CaptureError     the local capture server was misused (tests, demo)
    ├── dlq.store.UnknownDeadLetter   a dead-letter id that is not stored
    ├── dlq.replay.ReplayError        a dead letter that cannot be replayed as asked
    ├── analytics.trace.UnknownNotification   no message, event or dead letter has this id
    └── Signal                        control flow raised by a handler, not a failure of tidings
        ├── Reject(reason)            park the message in the dead letters, ack it
        └── Retry(delay, reason)      try the message again after ``delay`` seconds

Every message says what is wrong and what to do about it; the CLI prints it on one line.
"""

from __future__ import annotations


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""


class ConfigurationError(TidingsError):
    """Settings, a URL or an option that cannot work as given."""


class ConnectionFailed(TidingsError):
    """Redis or PostgreSQL could not be reached."""


class MigrationsPending(TidingsError):
    """The database schema is older than this version of tidings."""


class EmbeddedServerError(TidingsError):
    """The embedded Redis or PostgreSQL would not start or stop."""


class AppLoadError(TidingsError):
    """A `MODULE:APP` path could not be imported or does not name an App."""


class UnknownTopic(TidingsError):
    """A topic name that no App declared."""


class PayloadError(TidingsError):
    """A payload that is not JSON, does not match the topic's schema, or is too large."""


class PartlyAdded(TidingsError):
    """Some entries of one pipelined append landed and some did not (Redis refused them: out
    of memory, a key of the wrong type, ...). ``ids[i]`` is entry ``i``'s stream id, or None
    if it was not added; ``errors`` maps those to what Redis said."""

    def __init__(self, ids: list[bytes | None], errors: dict[int, Exception]) -> None:
        first = errors[min(errors)]
        super().__init__(f"{len(errors)} of {len(ids)} entries were not added"
                         f" ({type(first).__name__}: {first})")
        self.ids = ids
        self.errors = errors


class PartlyPublished(TidingsError):
    """Some messages of one batch were published and some were not. ``published`` maps the
    index of each published value to its message id; ``unpublished`` maps the others' indexes
    to what went wrong: send those again, and only those (the rest would go twice)."""

    def __init__(self, published: dict[int, str], unpublished: dict[int, Exception]) -> None:
        first = unpublished[min(unpublished)]
        super().__init__(
            f"{len(unpublished)} of {len(published) + len(unpublished)} messages were not"
            f" published ({type(first).__name__}: {first}); the other {len(published)} were:"
            f" send again only the values not published ({shortlist(sorted(unpublished))})")
        self.published = published
        self.unpublished = unpublished


def shortlist(numbers: list[int], shown: int = 10) -> str:
    """Numbers for an error message: the first ``shown``, then how many more."""
    text = ", ".join(str(n) for n in numbers[:shown])
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


class Signal(TidingsError):
    """Control flow raised by a handler; not a failure of tidings itself."""


class Reject(Signal):
    """Raised by a handler: the message can never succeed; park it and ack it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Signal):
    """Raised by a handler: try this message again later.

    ``delay`` is in seconds; None lets the agent's retry policy choose. The attempt counts
    against the policy's ``max_attempts``: past it the message is dead-lettered.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, not {delay}")
        self.delay = delay
        self.reason = reason
