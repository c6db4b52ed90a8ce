"""Real `tidings worker` subprocesses for process-level tests: their servers, start, stop, logs.

Imported by the integration tests as a top-level module (tests/ has no __init__.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import text

from tidings.database import create_engine, quote_ident

REPO = Path(__file__).resolve().parents[1]
TIDINGS = Path(sys.executable).parent / "tidings"
PARTITIONS = 2
SHUTDOWN_TIMEOUT_S = 8.0
HOST = socket.gethostname()


@dataclass
class Servers:
    redis_url: str
    database_url: str
    namespace: str
    schema: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            PYTHONUNBUFFERED="1",
            TIDINGS_REDIS_URL=self.redis_url,
            TIDINGS_DATABASE_URL=self.database_url,
            TIDINGS_NAMESPACE=self.namespace,
            TIDINGS_DATABASE_SCHEMA=self.schema,
            TIDINGS_HOME=str(self.home),
            TIDINGS_PARTITIONS=str(PARTITIONS),
            TIDINGS_BATCH_SIZE="10",
            TIDINGS_BLOCK_MS="100",
            TIDINGS_CLAIM_IDLE_MS="500",
            TIDINGS_LEASE_TTL_MS="1000",
            TIDINGS_HEARTBEAT_INTERVAL_S="0.5",
            TIDINGS_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        )
        env.update(extra)
        return env


class WorkerProcess:
    """One `tidings worker` subprocess; its output goes to a log file shown when a test fails."""

    def __init__(self, servers: Servers, app: str, name: str, **env: str) -> None:
        self.name = name
        self.log_path = servers.home / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(TIDINGS), "worker", app, "--name", name],
            cwd=REPO, env=servers.env(**env), stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def consumer(self) -> str:
        return f"{self.name}-{HOST}-{self.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def wait_until(condition: Callable[[], bool], within: float, *workers: WorkerProcess) -> None:
    deadline = time.monotonic() + within
    while not condition():
        for worker in workers:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited early:\n{worker.log()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()}" for w in workers)
            raise AssertionError(f"not done after {within}s\n{logs}")
        time.sleep(0.05)




async def drop_schema(servers: Servers) -> None:
    engine = create_engine(
        servers.database_url, schema=servers.schema, pool_size=1, connect_timeout=5
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(servers.schema)} CASCADE"))
    finally:
        await engine.dispose()
