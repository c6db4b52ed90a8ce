"""Scheduler benchmark: one tick with 1 000 due among 1 000 000 stored, against 1 000 stored.

    python -m tidings.bench.scheduler [--stored N] [--due N] [--repeats R] [--json]

Uses TIDINGS_REDIS_URL / TIDINGS_DATABASE_URL (else the embedded servers), a throwaway schema
and key prefix, both removed at the end. The baseline is the same tick over a table holding only
the due schedules, so the ratio shows what the stored total costs (the index makes it ~1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.app import App
from tidings.bench.stats import rate
from tidings.connections import open_database
from tidings.database import quote_ident
from tidings.migrate import upgrade
from tidings.scheduling.scheduler import Scheduler
from tidings.settings import Settings

# Due rows get ids 1..due; the rest are due between one and thirty days after the base time.
_FILL = text("""
INSERT INTO schedules (name, kind, expression, timezone, topic, payload, key, next_fire_at)
SELECT 'bench-' || g, 'cron', '*/5 * * * *', 'Europe/London', 'bench.scheduler',
       jsonb_build_object('n', g), 'k' || (g % 1000),
       CASE WHEN g <= :due THEN CAST(:base AS timestamptz)
            ELSE CAST(:base AS timestamptz) + make_interval(mins => 1440 + g % 43200) END
FROM generate_series(1, :stored) AS g
""")
_REARM = text(
    "UPDATE schedules SET next_fire_at = CAST(:at AS timestamptz) WHERE id <= :due"
)
_EXPLAIN = text("""
EXPLAIN SELECT id FROM schedules WHERE state = 'active' AND next_fire_at <= CAST(:at AS timestamptz)
ORDER BY next_fire_at LIMIT 1000 FOR UPDATE SKIP LOCKED
""")


async def _fill(engine: AsyncEngine, stored: int, due: int, base: datetime) -> float:
    began = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(_FILL, {"stored": stored, "due": due, "base": base})
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE schedules"))
    return time.perf_counter() - began


async def _measure(
    app: App, engine: AsyncEngine, due: int, base: datetime, repeats: int
) -> dict[str, Any]:
    scheduler = Scheduler(app, engine, name="bench", batch=due)
    ticks, relays = [], []
    for r in range(repeats):
        at = base + timedelta(minutes=5 * r)
        async with engine.begin() as conn:
            await conn.execute(_REARM, {"at": at, "due": due})
        began = time.perf_counter()
        result = await scheduler.tick(as_of=at)
        ticked = time.perf_counter()
        await scheduler.relay.drain()
        relayed = time.perf_counter()
        if result.fired != due:
            raise RuntimeError(f"tick {r} fired {result.fired} of {due}")
        ticks.append(ticked - began)
        relays.append(relayed - ticked)
    async with engine.connect() as conn:
        plan = "\n".join((await conn.execute(_EXPLAIN, {"at": base})).scalars())
    tick_s, relay_s = median(ticks), median(relays)
    return {
        "tick_ms": tick_s * 1000, "relay_ms": relay_s * 1000,
        "fires_per_s": rate(due, tick_s + relay_s),
        "uses_index": "ix_schedules_next_fire_at_active" in plan,
    }


async def _one(settings: Settings, stored: int, due: int, repeats: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={"database_schema": f"bench_sched_{tag}", "namespace": f"bench-sched-{tag}"}
    )
    engine = await open_database(settings)
    app = App("bench-scheduler")
    await app.start(settings)
    base = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)
    try:
        await upgrade(engine, settings.database_schema)
        fill_s = await _fill(engine, stored, due, base)
        figures = await _measure(app, engine, due, base, repeats)
        return {"stored": stored, "due": due, "fill_s": fill_s, **figures}
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                text(f"DROP SCHEMA IF EXISTS {quote_ident(settings.database_schema)} CASCADE")
            )
        await engine.dispose()
        client = app.transport.client  # type: ignore[attr-defined]
        keys = [k async for k in client.scan_iter(match=f"{settings.namespace}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await app.stop()


async def run(stored: int, due: int, repeats: int) -> dict[str, Any]:
    settings = Settings.from_env()
    baseline = await _one(settings, due, due, repeats)
    large = await _one(settings, stored, due, repeats)
    return {
        "baseline": baseline, "tidings": large,
        "tick_ratio": large["tick_ms"] / baseline["tick_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args.stored, args.due, args.repeats))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for label in ("baseline", "tidings"):
        r = report[label]
        print(f"{r['stored']:>9} stored, {r['due']} due: tick {r['tick_ms']:.1f} ms, relay"
              f" {r['relay_ms']:.1f} ms, {r['fires_per_s']:.0f} fires/s, index used:"
              f" {r['uses_index']} (fill {r['fill_s']:.1f} s)")
    print(f"tick time, {args.stored} stored / {args.due} stored: {report['tick_ratio']:.2f}")


if __name__ == "__main__":
    main()
