"""One worker process of test_failover_processes: sends SMS through a FailoverProvider over two
local Twilio stand-ins, with its breakers shared in Redis.

Driven by lines on stdin, it answers one JSON object per line on stdout:

    send N   one line per delivery {"key", "provider", "ok", "code"}, then {"done": N}
    stats    {"calls": {provider: calls}, "transitions": [[name, old, new], ...]}
    quit     exits 0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from tidings.notification import Channel, Content, parse_notification
from tidings.sinks.base import Delivery, Provider, SendResult
from tidings.sinks.breaker import BreakerConfig, RedisBreakerStore
from tidings.sinks.failover import CircuitBreakers, FailoverProvider
from tidings.sinks.sms_twilio import TwilioSms

# Shared with the test, which imports it: small durations so a run takes seconds.
CONFIG = BreakerConfig(window_s=10, buckets=10, min_calls=10, failure_rate=0.5, open_s=1.0,
                       half_open_calls=2)
PHONE = "+14155550123"


class Counted:
    """A provider that counts the calls it is given (to see who called the failing one)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.channel: Channel = inner.channel
        self.calls = 0

    async def send(self, delivery: Delivery) -> SendResult:
        self.calls += 1
        return await self.inner.send(delivery)

    async def aclose(self) -> None:
        await self.inner.aclose()


def delivery(key: str) -> Delivery:
    notification = parse_notification({
        "type": "account.alert", "idempotency_key": key, "content": {"body": f"alert {key}"},
        "recipient": {"user_id": "u-1", "phone": PHONE}})
    return Delivery(notification, "sms", PHONE, Content(body=f"alert {key}"), key)


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace, failover: FailoverProvider,
                breakers: CircuitBreakers, providers: list[Counted]) -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ready": args.name})
    sent = 0
    while line := (await reader.readline()).decode().split():
        if line[0] == "send":
            for _ in range(int(line[1])):
                sent += 1
                key = f"{args.name}-{sent}"
                result = await failover.send(delivery(key))
                emit({"key": key, "provider": result.provider, "ok": result.ok,
                      "code": result.failure.code if result.failure else None})
            emit({"done": int(line[1])})
        elif line[0] == "stats":
            emit({"calls": {p.name: p.calls for p in providers},
                  "transitions": [[t.name, t.old, t.new] for t in breakers.recent]})
        elif line[0] == "quit":
            return


async def main(args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=10) as http, Redis.from_url(args.redis) as redis:
        providers = [
            Counted(TwilioSms(http, account_sid="AC1", auth_token="token",
                              sender="+15005550006", base_url=url, name=name))
            for name, url in (("twilio-a", args.a), ("twilio-b", args.b))]
        breakers = CircuitBreakers(RedisBreakerStore(redis, args.namespace), default=CONFIG)
        failover = FailoverProvider(providers, breakers)
        await serve(args, failover, breakers, providers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--name", "--redis", "--namespace", "--a", "--b"):
        parser.add_argument(option, required=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
