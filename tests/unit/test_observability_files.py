"""Dashboard and alert rules: generated from one definition, valid for promtool and Grafana."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from streamrec.deploy import observability
from streamrec.deploy.localstack import install_debian

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/streamrec.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/streamrec.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    return install_debian("promtool", "prometheus", log=lambda m: None)


def test_committed_files_are_the_rendering():
    assert RULES.read_text() == observability.rules_text(), \
        "run `streamrec deploy prometheus-rules > deploy/prometheus/rules/streamrec.yml`"
    assert DASHBOARD.read_text() == observability.dashboard_text(), \
        "run `streamrec deploy grafana-dashboard > deploy/grafana/dashboards/streamrec.json`"


def test_promtool_accepts_the_rules(promtool):
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_fires_in_promtool_unit_tests(promtool):
    tests = ROOT / "deploy/prometheus/tests/alerts_test.yml"
    proc = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case["alert_rule_test"]}
    assert tested == {a.name for a in observability.ALERTS}, "every alert needs a promtool test"


def test_every_alert_has_a_runbook_and_declares_its_metrics():
    for alert in observability.ALERTS:
        assert len(alert.runbook) > 40 and alert.metrics
        for metric in alert.metrics:
            assert metric in alert.expr


def test_dashboard_uses_the_provisioned_datasource_and_mount():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    targets = [t for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    assert targets and all(t["datasource"]["uid"] == uid for t in targets)
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/streamrec.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts[provider["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"


def test_promtool_accepts_the_scrape_configs(promtool, tmp_path):
    from streamrec.deploy.prometheus_config import write_local_config
    from streamrec.settings import Settings

    local = tmp_path / "prometheus.yml"
    write_local_config(Settings(), local)
    # The compose file's rule path exists only inside the container: syntax there, everything here.
    for args in (["--syntax-only", str(ROOT / "deploy/prometheus/prometheus.yml")], [str(local)]):
        proc = subprocess.run([promtool, "check", "config", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr
