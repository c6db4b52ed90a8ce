"""`tidings bench transport` against a real Redis, with counts small enough for a test."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tidings.bench.transport import Counts, run_transport_bench
from tidings.cli import cli
from tidings.settings import Settings

pytestmark = pytest.mark.redis

MEASURES = {"send": 0.7, "send_many": 0.7, "consume": 0.5}


async def keys_of(redis_url: str, namespace: str) -> list[bytes]:
    client = Redis.from_url(redis_url)
    try:
        return [k async for k in client.scan_iter(match=f"{namespace}*")]
    finally:
        await client.aclose()


async def test_report_has_every_measure_with_its_ratio_and_target(
    redis_url: str, namespace: str
) -> None:
    settings = Settings(redis_url=redis_url, namespace=namespace)
    report = await run_transport_bench(settings, Counts(20, 200, 200, repeats=2))

    assert set(report["measurements"]) == set(MEASURES)
    for name, m in report["measurements"].items():
        assert m["raw_per_s"] > 0
        assert m["tidings_per_s"] > 0
        assert m["ratio"] == pytest.approx(m["tidings_per_s"] / m["raw_per_s"])
        assert m["target"] == MEASURES[name]
        assert m["passed"] == (m["ratio"] >= m["target"])
        assert len(m["raw_runs_per_s"]) == len(m["tidings_runs_per_s"]) == 2
    assert report["counts"] == {"send": 20, "send_many": 200, "consume": 200}
    assert report["repeats"] == 2
    for field in ("redis_version", "redis_py_version", "python_version"):
        assert report[field]
    assert orjson.loads(orjson.dumps(report)) == report


async def test_benchmark_leaves_no_key_behind(redis_url: str, namespace: str) -> None:
    settings = Settings(redis_url=redis_url, namespace=namespace)
    await run_transport_bench(settings, Counts(5, 100, 100, repeats=1))
    assert await keys_of(redis_url, namespace) == []


def test_json_option_prints_one_json_object(redis_url: str, namespace: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["bench", "transport", "--json", "--single", "5", "--pipelined", "100",
         "--consume", "100", "--repeats", "1"],
        env={"TIDINGS_REDIS_URL": redis_url, "TIDINGS_NAMESPACE": namespace},
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert set(report["measurements"]) == set(MEASURES)
