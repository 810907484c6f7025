"""Dashboards and alert rules name only metrics mwiproxy exports; the rules pass
promtool's own checks and unit tests (Debian's prometheus package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mwiproxy.metrics import names

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
METRIC = re.compile(r"\b((?:tbot|mwibot|mwiproxy)_[a-z_]+)\b")
KNOWN = set(names.ALL_NAMES)


def _known(metric: str) -> bool:
    # histograms expose _bucket/_sum/_count series under their base name
    base = re.sub(r"_(bucket|sum|count)$", "", metric)
    return metric in KNOWN or base in KNOWN


def _exprs_in_dashboard(path: Path) -> list[str]:
    dash = json.loads(path.read_text())
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return out


def _exprs_in_rules(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


@pytest.mark.parametrize("path", sorted((GRAFANA / "dashboards").glob("*.json")), ids=str)
def test_dashboard_metrics_exist(path):
    exprs = _exprs_in_dashboard(path)
    assert exprs
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and all(_known(m) for m in used), used - KNOWN
    dash = json.loads(path.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"]


def test_rules_name_known_metrics():
    used = {m for e in _exprs_in_rules(GRAFANA / "alerts" / "mwibot.rules.yml")
            for m in METRIC.findall(e)}
    assert used and all(_known(m) for m in used), used - KNOWN


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_promtool_checks_and_unit_tests_pass():
    alerts = GRAFANA / "alerts"
    check = subprocess.run(["promtool", "check", "rules", "mwibot.rules.yml"], cwd=alerts,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "mwibot.rules.test.yml"], cwd=alerts,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout
