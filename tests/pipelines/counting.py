"""A pipeline for worker-process and CLI tests: it records every message it handles in Redis.

Run it with `tidings worker tests.pipelines.counting:app`. Each handled job appends
``"N:PID"`` to the list :func:`processed_key` names, before the message is acked, so a test
can tell which process handled what. ``COUNTING_DELAY_S`` makes each message take that long.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from tidings import App, Message
from tidings.streams import RedisTransport

TOPIC = "counting.jobs"
AGENT = "counting.record"


class Job(BaseModel):
    n: int


app = App("counting")
jobs = app.topic(TOPIC, model=Job)


def processed_key(namespace: str) -> str:
    return f"{namespace}:counting:processed"


@app.agent(jobs, name=AGENT)
async def record(message: Message[Job]) -> None:
    delay = float(os.environ.get("COUNTING_DELAY_S", "0"))
    if delay:
        await asyncio.sleep(delay)
    transport = app.transport
    assert isinstance(transport, RedisTransport)
    await transport.client.rpush(
        processed_key(app.namespace), f"{message.value.n}:{os.getpid()}"
    )
