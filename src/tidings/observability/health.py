"""Readiness: Redis and PostgreSQL reachable, migrations current, consumers heartbeating.

Each check names itself and, when it fails, says why, so a 503 from ``/health/ready`` tells an
operator what to fix. A check that cannot run because an earlier one failed says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import database, migrate
from tidings.observability.sources import Sources
from tidings.tables import consumers


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        failed = [c.name for c in self.checks if not c.ok]
        return {
            "status": "ready" if self.ok else "not ready",
            "failed": failed,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


async def check_ready(sources: Sources) -> Readiness:
    """Run every check (Redis and PostgreSQL at once), each bounded by the check timeout."""
    redis, database_checks = await asyncio.gather(
        _check_redis(sources), _check_database(sources)
    )
    return Readiness((redis, *database_checks))


async def _bounded(name: str, probe: Awaitable[str], limit_s: float) -> Check:
    try:
        async with asyncio.timeout(limit_s):
            return Check(name, True, await probe)
    except TimeoutError:
        return Check(name, False, f"no answer within {limit_s:g}s")
    except Exception as exc:
        return Check(name, False, str(exc) or type(exc).__name__)


async def _check_redis(sources: Sources) -> Check:
    async def ping() -> str:
        await sources.redis.ping()
        return "PING answered"

    return await _bounded("redis", ping(), sources.check_timeout_s)


async def _check_database(sources: Sources) -> list[Check]:
    engine = sources.engine
    if engine is None:  # a worker run without a database has nothing more to check
        return []
    limit = sources.check_timeout_s
    reached = await _bounded("postgresql", _ping(engine), limit)
    if not reached.ok:
        skipped = "not checked: PostgreSQL is unreachable"
        return [reached, Check("migrations", False, skipped), Check("heartbeats", False, skipped)]
    migrations = await _bounded("migrations", _migrations(engine, sources.schema), limit)
    if not migrations.ok:
        return [reached, migrations,
                Check("heartbeats", False, "not checked: the migrations are not current")]
    heartbeats = await _bounded(
        "heartbeats", _heartbeats(engine, sources.heartbeat_window_s), limit
    )
    return [reached, migrations, heartbeats]


async def _ping(engine: AsyncEngine) -> str:
    await database.ping(engine)
    return f"reachable at {database.display_url(engine)}"


async def _migrations(engine: AsyncEngine, schema: str) -> str:
    await migrate.check_current(engine, schema)
    return f"schema {schema} is at {migrate.head()}"


async def _heartbeats(engine: AsyncEngine, window_s: float) -> str:
    async with engine.connect() as conn:
        live = await consumers.live_instances(conn, window_s)
    if not live:
        raise NoHeartbeats(f"no consumer instance has sent a heartbeat in the last {window_s:g}s")
    groups = sorted({f"{i.topic}/{i.group}" for i in live})
    return f"{len(live)} live instance(s) in {', '.join(groups)}"


class NoHeartbeats(Exception):
    """No worker instance is heartbeating."""
