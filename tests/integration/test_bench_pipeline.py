"""`tidings bench pipeline` against real Redis and PostgreSQL, with counts small enough for a
test: the report's shape, not its figures."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tidings.bench.pipeline import Counts, next_figure, run_pipeline_bench
from tidings.cli import cli
from tidings.errors import TidingsError
from tidings.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def settings(redis_url: str, database_url: str, namespace: str, schema_name: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                    database_schema=schema_name)


async def test_report_has_rates_latencies_and_their_runs(settings: Settings) -> None:
    report = await run_pipeline_bench(settings, Counts(drain=200, rate=500, steady_s=0.4,
                                                       repeats=2, warmup_s=0.2))

    assert report["bench"] == "pipeline"
    assert report["notifications_per_s"] > 0
    assert report["raw_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["notifications_per_s"] / report["raw_per_s"])
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    assert report["passed"] == {
        "throughput": report["notifications_per_s"] >= report["targets"]["notifications_per_s"],
        "latency": report["latency_p99_ms"] <= report["targets"]["latency_p99_ms"],
    }
    runs = report["runs"]
    assert len(runs.pop("raw_per_s")) == 4, "the raw loop runs next to each topology's drain"
    assert all(len(values) == 2 for values in runs.values())
    assert set(report["topologies"]) == {"hop", "inline"}
    for figures in report["topologies"].values():
        assert figures["notifications_per_s"] > 0
        assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"]
        # A notification costs the worker some CPU, and far less than a second of it.
        assert 0 < figures["drain_cpu_us"] < 1_000_000
        assert 0 < figures["steady_cpu_us"] < 1_000_000
    assert report["topology"] == "inline"
    assert report["notifications_per_s"] == report["topologies"]["inline"]["notifications_per_s"]
    assert report["counts"] == {"drain": 200, "steady": 200, "warmup": 100}
    assert report["partitions"] == settings.partitions
    assert report["postgres_commit_ms"] > 0
    assert report["postgres_rows_per_s"] > 0
    assert orjson.loads(orjson.dumps(report)) == report


async def test_benchmark_leaves_no_key_behind(settings: Settings) -> None:
    await run_pipeline_bench(settings, Counts(drain=50, rate=200, steady_s=0.2, repeats=1,
                                              warmup_s=0.1))

    client = Redis.from_url(str(settings.redis_url))
    try:
        assert [k async for k in client.scan_iter(match=f"{settings.namespace}*")] == []
    finally:
        await client.aclose()


def test_json_option_prints_one_json_object(settings: Settings) -> None:
    env = {"TIDINGS_REDIS_URL": str(settings.redis_url),
           "TIDINGS_DATABASE_URL": str(settings.database_url),
           "TIDINGS_NAMESPACE": settings.namespace,
           "TIDINGS_DATABASE_SCHEMA": settings.database_schema}
    result = CliRunner().invoke(
        cli, ["bench", "pipeline", "--json", "--drain", "50", "--rate", "200", "--seconds",
              "0.2", "--warmup", "0.1", "--partitions", "2", "--repeats", "1"], env=env)

    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(result.stdout)
    for field in ("notifications_per_s", "raw_per_s", "latency_p50_ms", "latency_p99_ms"):
        assert isinstance(report[field], int | float)
    assert report["partitions"] == 2


async def test_a_load_process_that_ends_without_reporting_is_an_error() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "raise SystemExit(3)", stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None

    with pytest.raises(TidingsError, match=r"exit code 3\) before reporting"):
        await next_figure(process, process.stdout)
