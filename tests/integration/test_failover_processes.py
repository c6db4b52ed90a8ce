"""Two worker processes share one breaker per provider in Redis: provider A fails, its breaker
opens once for both, traffic fails over to B, and returns to A once A recovers.

The workers (`failover_worker.py`) send when told to, so each phase is driven step by step and
every wait is a poll with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from failover_worker import CONFIG
from redis.asyncio import Redis

from tidings.capture.http import HttpCapture
from tidings.sinks.breaker import BreakerState, RedisBreakerStore

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("failover_worker.py")
REPO = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT_S = 60.0


class Worker:
    """One failover_worker.py process; its stderr (the breaker log) goes to a file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: IO[bytes],
                 log_path: Path) -> None:
        self.name, self.process, self._log, self.log_path = name, process, log, log_path
        self.results: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, name: str, tmp_path: Path, *args: str) -> Worker:
        log_path = tmp_path / f"{name}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--name", name, *args, cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
        worker = cls(name, process, log, log_path)
        assert await worker._reply() == {"ready": name}
        return worker

    async def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), REPLY_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line:
            raise AssertionError(f"worker {self.name} gave no answer:\n{self.log()}")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def _ask(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()

    async def send(self, n: int) -> list[dict[str, Any]]:
        """Send ``n`` deliveries; returns how each went."""
        await self._ask(f"send {n}")
        results = [await self._reply() for _ in range(n)]
        assert await self._reply() == {"done": n}
        self.results += results
        return results

    async def stats(self) -> dict[str, Any]:
        await self._ask("stats")
        return await self._reply()

    async def quit(self) -> int:
        await self._ask("quit")
        return await asyncio.wait_for(self.process.wait(), REPLY_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._log.close()


def providers(results: list[dict[str, Any]]) -> set[str]:
    return {r["provider"] for r in results}


def transitions(*stats: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(name, old, new) for s in stats for name, old, new in s["transitions"]]


async def test_a_shared_breaker_fails_over_and_back_across_two_processes(
        redis: Redis, redis_url: str, namespace: str, tmp_path: Path) -> None:
    store = RedisBreakerStore(redis, namespace)
    async with HttpCapture() as a, HttpCapture() as b:
        a.fault("sms", status=503, times=None)
        args = ("--redis", redis_url, "--namespace", namespace, "--a", a.url, "--b", b.url)
        workers: list[Worker] = []
        try:
            one = await Worker.start("one", tmp_path, *args)
            workers.append(one)
            two = await Worker.start("two", tmp_path, *args)
            workers.append(two)

            # Worker one alone finds A failing: min_calls failures open A's breaker.
            first = await one.send(CONFIG.min_calls + 2)
            assert providers(first) == {"twilio-b"}
            assert transitions(await one.stats())[0] == ("twilio-a", "closed", "open")
            assert await store.state("twilio-a") is not BreakerState.CLOSED

            # Worker two never saw A fail, yet finds its breaker open: it fails over at once
            # (a trial call to A now and then if open_s passes, never min_calls of its own).
            assert providers(await two.send(CONFIG.min_calls + 2)) == {"twilio-b"}
            assert (await two.stats())["calls"]["twilio-a"] < CONFIG.min_calls

            # A recovers: after open_s a trial half-opens it, and successful trials close it.
            a.clear_faults()
            deadline = time.monotonic() + 60
            while await store.state("twilio-a") is not BreakerState.CLOSED:
                assert time.monotonic() < deadline, "A's breaker never closed again"
                await one.send(1)
                await two.send(1)
                await asyncio.sleep(0.05)
            assert providers(await one.send(5) + await two.send(5)) == {"twilio-a"}

            stats = [await one.stats(), await two.stats()]
            changes = transitions(*stats)
            assert changes.count(("twilio-a", "closed", "open")) == 1
            assert changes.count(("twilio-a", "half_open", "closed")) == 1
            assert ("twilio-a", "open", "half_open") in changes
            assert all(name == "twilio-a" for name, _, _ in changes)  # B never tripped
            assert [await w.quit() for w in workers] == [0, 0]
        finally:
            for worker in workers:
                await worker.close()

        # Every delivery was sent exactly once, by the provider its result names.
        results = one.results + two.results
        assert all(r["ok"] for r in results)
        sent_by = {"twilio-a": {s.idempotency_key for s in a.sms},
                   "twilio-b": {s.idempotency_key for s in b.sms}}
        assert sent_by["twilio-a"].isdisjoint(sent_by["twilio-b"])
        assert sent_by["twilio-a"] | sent_by["twilio-b"] == {r["key"] for r in results}
        assert all(r["key"] in sent_by[r["provider"]] for r in results)
        assert a.counts.duplicates == b.counts.duplicates == 0
