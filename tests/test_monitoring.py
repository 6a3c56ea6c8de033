"""The shipped monitoring: Prometheus alert rules (checked and unit-tested by promtool where it
is installed), the series they and the dashboard use, and the compose profile that runs
Prometheus and Grafana with the dashboard provisioned."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_metrics import base, known_series

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian's prometheus package has it; .ci/run unpacks it, "
    "or set PROMTOOL=/path/to/promtool)",
)

PROMETHEUS_SERIES = {"up"}
"""Series Prometheus makes itself, not flockrt."""


def rule_expressions() -> list[str]:
    """Each rule's expr (the file is plain enough to read without a YAML parser)."""
    text = ALERTS.read_text()
    exprs = []
    for match in re.finditer(r"^      (?:- )?\s*expr: (>-\n)?(.*?)(?=^\s+for:)", text, re.M | re.S):
        exprs.append(" ".join(match.group(2).split()))
    return exprs


def series_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    return set(re.findall(r"\b(flockrt_[a-z0-9_]+|process_[a-z_]+|up)\b", without_strings))


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    names = re.findall(r"^      - alert: (\w+)$", ALERTS.read_text(), re.M)
    asked = {"FlockrtNodeDown", "FlockrtRestartsSpiking", "FlockrtTasksFailing", "FlockrtNatsDisconnected"}
    assert asked <= set(names)
    assert len(rule_expressions()) == len(names)


def test_every_series_the_rules_and_the_dashboard_use_is_exported() -> None:
    known = known_series() | PROMETHEUS_SERIES
    dashboard = json.loads((DEPLOY / "grafana" / "flockrt.json").read_text())
    targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
    dashboard_exprs = [target["expr"] for target in targets if "expr" in target]
    for expr in rule_expressions() + dashboard_exprs:
        used = series_in(expr)
        assert used, expr
        assert used <= known, f"{expr}: not exported by flockrt.metrics: {sorted(used - known)}"
    # And the alerts' label values are ones flockrt reports.
    assert 'outcome="error"' in ALERTS.read_text()
    assert {base(name) for expr in rule_expressions() for name in series_in(expr)} >= {
        "flockrt_actor_restarts",
        "flockrt_tasks",
        "flockrt_nats_connected",
    }


@needs_promtool
def test_promtool_accepts_the_rules_and_the_prometheus_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in done.stdout
    # The config as the container sees it, with the rule file where the compose file mounts it.
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/alerts.yml", str(ALERTS)))
    done = subprocess.run([PROMTOOL, "check", "config", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


UNIT_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="flockrt", instance="node-1:4002"}}'
        values: '1 0 0 0'
      - series: 'flockrt_nats_connected{{system="node-2", instance="node-2:4002"}}'
        values: '1 0 0 0'
      - series: 'flockrt_actor_restarts_total{{system="node-1", instance="node-1:4002"}}'
        values: '0 5 20 40'
      - series: 'flockrt_tasks_total{{system="node-1", instance="n1", type="general", outcome="ok"}}'
        values: '0+10x10'
      - series: 'flockrt_tasks_total{{system="node-1", instance="n1", type="general", outcome="error"}}'
        values: '0+5x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: FlockrtNodeDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: flockrt, instance: "node-1:4002"}}
      - eval_time: 3m
        alertname: FlockrtNatsDisconnected
        exp_alerts:
          - exp_labels: {{severity: critical, system: node-2, instance: "node-2:4002"}}
      - eval_time: 3m
        alertname: FlockrtRestartsSpiking
        exp_alerts:
          - exp_labels: {{severity: warning, system: node-1, instance: "node-1:4002"}}
      - eval_time: 10m
        alertname: FlockrtTasksFailing
        exp_alerts:
          - exp_labels: {{severity: warning, system: node-1, instance: n1, type: general}}
      - eval_time: 10m
        alertname: FlockrtPublishesDropped
        exp_alerts: []
"""


@needs_promtool
def test_the_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """promtool's unit tests: a node that stops answering, a lost NATS, restarts piling up and
    a third of the tasks failing each raise their alert; nothing dropped raises none. The
    annotations are left out of the copy tested (``check rules`` checks their templates)."""
    assert PROMTOOL is not None
    rules = tmp_path / "alerts.yml"
    annotations = re.compile(r"^        annotations:\n(?:^          .*\n)*", re.M)
    rules.write_text(annotations.sub("", ALERTS.read_text()))
    assert "annotations" not in rules.read_text() and "expr:" in rules.read_text()
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(UNIT_TESTS.format(alerts=json.dumps(str(rules))))
    done = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_compose_has_a_monitoring_profile_that_provisions_the_dashboard() -> None:
    compose = (DEPLOY / "compose.yaml").read_text()
    services = dict(re.findall(r"^  ([a-z0-9-]+):.*\n((?:    .*\n|\n)*)", compose, re.M))
    for service in ("prometheus", "grafana"):
        assert "profiles: [monitoring]" in services[service], service
    assert "profiles" not in services["node-1"] and "profiles" not in services["nats"]
    # Every file the two mount is in the repository, mounted where their configs look.
    mounts = re.findall(r"^      - (\./[^:]+):([^:]+):ro$", compose, re.M)
    assert len(mounts) == 4
    for source, _ in mounts:
        assert (DEPLOY / source).exists(), source
    targets = dict(mounts)
    assert targets["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    prometheus = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert '"node-1:4002", "node-2:4002"' in prometheus and "metrics_path: /metrics" in prometheus
    assert targets["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "flockrt.yml").read_text()
    dashboard_dir = re.search(r"path: (\S+)", provider).group(1)  # type: ignore[union-attr]
    assert targets["./grafana/flockrt.json"] == f"{dashboard_dir}/flockrt.json"
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource and "url: http://prometheus:9090" in datasource
    # The panels name their data source through a variable that provisioning resolves too.
    dashboard = json.loads((DEPLOY / "grafana" / "flockrt.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
