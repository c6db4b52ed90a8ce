"""`tidings publish --file`: what it says when a chunk fails midway."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console

from tidings.message import Priority
from tidings.publishing import PublishIncomplete, _publish_all


class FailingTopic:
    """A topic whose ``fail_on``-th send_many raises ``error`` (sent, maybe taken)."""

    name = "jobs"

    def __init__(self, fail_on: int, error: Exception) -> None:
        self.calls = 0
        self.fail_on, self.error = fail_on, error

    async def send_many(self, values: list[Any], **_: Any) -> list[str]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error
        return [f"id-{v['n']}" for v in values]


async def test_a_connection_lost_midway_says_which_lines_may_have_landed() -> None:
    """Lines 501-1000 were sent when the connection broke: they may be in Redis already, so
    the advice must not be to publish them again blindly (that would send them twice)."""
    records = [(n, {"n": n}) for n in range(1, 1201)]
    topic = FailingTopic(2, RedisConnectionError("Connection closed by server."))

    with pytest.raises(PublishIncomplete) as caught:
        await _publish_all(topic, records, lambda _v: None, Priority.NORMAL,  # type: ignore[arg-type]
                           Console(quiet=True))

    assert str(caught.value) == (
        "published 500 of 1200 messages; lines 501-1000 may or may not have been published"
        " (ConnectionError: Connection closed by server.): the connection failed, so whether"
        " Redis took them is unknown; check before publishing them again; the lines after"
        " 1000 were not sent")
