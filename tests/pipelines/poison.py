"""A worker app whose handler kills its own process on a poison message (for process tests).

Every other message is recorded in a Redis list ``{namespace}:poison:processed``.
"""

from __future__ import annotations

import os
import signal

from pydantic import BaseModel

from tidings import App, Message
from tidings.streams import RedisTransport

TOPIC = "poison.jobs"
AGENT = "poison.work"


class Job(BaseModel):
    n: int
    poison: bool = False


app = App("poison")
jobs = app.topic(TOPIC, model=Job, partitions=1)


def processed_key(namespace: str) -> str:
    return f"{namespace}:poison:processed"


@app.agent(jobs, name=AGENT)
async def work(message: Message[Job]) -> None:
    if message.value.poison:
        os.kill(os.getpid(), signal.SIGKILL)  # the handler takes its worker down with it
    transport = app.transport
    assert isinstance(transport, RedisTransport)
    await transport.client.rpush(processed_key(app.namespace), str(message.value.n))
