"""Dashboards and alert rules name only metrics documented as public API (README.md);
the dashboards are what grafana/build_dashboards.py writes; the rules and the example
scrape config pass promtool's checks and the rules' unit tests (Debian's prometheus);
the bot starts its renewal counters the way those unit tests assume."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mwiproxy.metrics import names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = sorted((GRAFANA / "alerts").glob("*.rules.yml"))
METRIC = re.compile(r"\b((?:tbot|mwibot|mwiproxy)_[a-z_]+)\b")
HAS_PROMTOOL = shutil.which("promtool") is not None


def _documented() -> set[str]:
    """The metric names of README.md's metrics table (the public API)."""
    return set(re.findall(r"^\s*\| `([a-z_]+)` \|", (ROOT / "README.md").read_text(), re.M))


def _unknown(exprs: list[str]) -> set[str]:
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, exprs
    # histograms expose _bucket/_sum/_count series under their base name
    return {m for m in used if re.sub(r"_(bucket|sum|count)$", "", m) not in _documented()}


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _promtool(*args: str) -> str:
    res = subprocess.run(["promtool", *args], cwd=GRAFANA, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_the_bots_own_names_are_documented():
    assert set(names.ALL_NAMES) <= _documented()


def test_there_are_three_dashboards_as_generated():
    assert {p.name for p in DASHBOARDS} == {"mwiproxy-service-host.json",
                                            "mwiproxy-cluster-proxy.json",
                                            "mwiproxy-auth.json"}
    rendered = _builder().render()
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], \
            f"{path.name} is stale: run python3 grafana/build_dashboards.py"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels(path):
    dash = json.loads(path.read_text())
    assert dash["uid"] and dash["schemaVersion"] == 39
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "job", "instance"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    targets = [t for p in dash["panels"] for t in p.get("targets", [])]
    exprs = [t["expr"] for t in targets]
    assert exprs and _unknown(exprs) == set()
    for e in exprs:
        assert 'job=~"$job",instance=~"$instance"' in e, e
        # rates follow Grafana's interval (the stat "failures in 1h" is the one fixed range)
        assert all(w in ("$__rate_interval", "1h") for w in re.findall(r"\[([^\]]+)\]", e)), e
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    for p in heatmaps:
        assert all(t["format"] == "heatmap" and "_bucket{" in t["expr"] for t in p["targets"])


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_rules_name_documented_metrics(path):
    doc = yaml.safe_load(path.read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    assert _unknown(exprs) == set()


def test_bot_starts_its_counters_at_zero():
    """The promtool tests start mwibot_renewals_total at 0 before the first renewal: the
    exporter must too, or the first failure appears at 1 and increase() misses it."""
    registry = CollectorRegistry()
    metrics = names.BotMetrics(registry)

    def samples() -> dict[tuple[str, str | None], float]:
        text = generate_latest(registry).decode()
        return {(s.name, s.labels.get("result")): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    assert samples()[("mwibot_renewals_total", "success")] == 0.0
    assert samples()[("mwibot_renewals_total", "failure")] == 0.0
    # a task's failure counter exists (at 0) from its first, successful, iteration
    metrics.task_iteration("database", "pg", ok=True, seconds=0.1)
    assert samples()[("tbot_task_iterations_failed", None)] == 0.0
    assert samples()[("tbot_task_iterations_successful", None)] == 1.0


@pytest.mark.skipif(not HAS_PROMTOOL, reason="promtool (Debian prometheus) missing")
def test_promtool_checks_the_rules_and_the_example_config():
    out = _promtool("check", "config", "prometheus.yml")
    assert "is valid prometheus config" in out
    assert out.count(" rules found") == len(RULES), out


@pytest.mark.skipif(not HAS_PROMTOOL, reason="promtool (Debian prometheus) missing")
@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path):
    _promtool("check", "rules", f"alerts/{path.name}")
    tests = path.with_name(path.name.replace(".rules.yml", ".rules.test.yml"))
    assert "SUCCESS" in _promtool("test", "rules", f"alerts/{tests.name}")


@pytest.mark.skipif(not HAS_PROMTOOL, reason="promtool (Debian prometheus) missing")
def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"]
              for r in g["rules"]}
    tested = {t["alertname"] for p in (GRAFANA / "alerts").glob("*.rules.test.yml")
              for case in yaml.safe_load(p.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested
