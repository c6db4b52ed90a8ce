"""Dead letters: recorded from the dead-letter streams into PostgreSQL, listed, replayed, purged."""

from tidings.dlq.filters import Filter, FilterError, parse
from tidings.dlq.recorder import DeadLetterRecorder
from tidings.dlq.replay import Replayed, Replayer, ReplayError
from tidings.dlq.store import DeadLetters, Selection, UnknownDeadLetter

__all__ = [
    "DeadLetterRecorder",
    "DeadLetters",
    "Filter",
    "FilterError",
    "ReplayError",
    "Replayed",
    "Replayer",
    "Selection",
    "UnknownDeadLetter",
    "parse",
]
