"""ops/: the alert rules and the Grafana dashboard parse and use only metrics tidings exports.

With `promtool` on the PATH (Debian: `apt-get install prometheus`) the rules are also checked,
their unit tests (alerts.test.yml) run, and the dashboard's queries parsed, by promtool itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidings.agent import AgentStats
from tidings.message import Priority
from tidings.observability.deliveries import PipelineMetrics
from tidings.observability.metrics import AgentCounts, PoolUsage, Snapshot, SnapshotCollector
from tidings.observability.queues import Lane, LaneGroup, PartitionState, QueueSnapshot, TopicState
from tidings.observability.scheduling import SchedulerMetrics
from tidings.sinks.breaker import BreakerState

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "alerts.yml"
RULE_TESTS = RULES.with_name("alerts.test.yml")
DASHBOARD = OPS / "grafana" / "tidings.json"
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every sample name the collector emits when every source has something to say."""
    group = LaneGroup("g", pending=1, lag=1, oldest_pending_ms=0, consumers=1)
    lane = Lane(Priority.NORMAL, "s", 1, (group,))
    queues = QueueSnapshot(0, (TopicState("t", (PartitionState(0, (lane,), 0, 0),), {"g": 1}),))
    pipeline = PipelineMetrics()
    pipeline.delivery("email", "smtp", "acme", "sent")
    pipeline.accepted("email", "smtp", 0.1)
    pipeline.provider_call("smtp", "sent", 0.1)
    scheduler = SchedulerMetrics()
    scheduler.fired(0.5)
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(
        agents=(AgentCounts("t", "a", AgentStats(), 1),), queues=queues, redis_up=True,
        live={("t", "g"): 1}, database_up=True,
        pools=(PoolUsage("redis", "main", 0, 0, 1), PoolUsage("database", "main", 0, 0, 1)),
        breakers={"twilio": BreakerState.OPEN}, collectors=(pipeline, scheduler),
    )
    return {sample.name for family in collector.collect() for sample in family.samples}


def test_the_rules_file_has_groups_of_named_rules() -> None:
    document = yaml.safe_load(RULES.read_text())

    assert [group["name"] for group in document["groups"]] == ["tidings"]
    for rule in rules():
        assert ("alert" in rule) != ("record" in rule), rule
        assert rule["expr"].strip()


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_the_issue_s_alerts_that_tidings_has_metrics_for_are_there() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}

    assert {"TidingsBacklogGrowing", "TidingsOldestPendingTooOld", "TidingsDeadLettersGrowing",
            "TidingsNoHeartbeats", "TidingsErrorRateHigh", "TidingsBreakerOpen",
            "TidingsSchedulerLate"} <= alerts


def test_the_rules_use_only_metrics_tidings_exports() -> None:
    used = {name for rule in rules() for name in re.findall(r"\btidings_[a-z_]+", rule["expr"])}

    assert used
    assert used <= exported_names(), used - exported_names()


def test_recording_rules_are_defined_before_alerts_use_them() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = {name for rule in rules() if "alert" in rule
            for name in re.findall(r"\btidings:[a-z_:0-9]+", rule["expr"])}

    assert used <= recorded


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_the_alerts_fire_in_promtool_s_rule_tests() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULES.parent,
                            capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    """The dashboard's PromQL with Grafana's variables filled in, as Prometheus would see it."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", ())]
    return [q.replace("$__rate_interval", "5m").replace("$topic", ".*") for q in queries]


def test_the_dashboard_queries_only_exported_metrics() -> None:
    used = {name for query in dashboard_queries()
            for name in re.findall(r"\btidings_[a-z_]+", query)}

    assert len(dashboard_queries()) >= 10
    assert used <= exported_names(), used - exported_names()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": query}
        for index, query in enumerate(dashboard_queries())
    ]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(as_rules))

    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
