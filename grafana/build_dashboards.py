"""Writes grafana/dashboards/*.json from the short panel lists below.

    python3 grafana/build_dashboards.py

The JSON files are what Grafana imports (and what the provisioning mounts); they are
generated so the three dashboards share one layout, one datasource variable and one way
of filtering by job and instance. Edit this file, run it, commit both:
tests/unit/test_grafana.py fails when the JSON is not what this file writes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job",instance=~"$instance"'  # every expression filters on both variables
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[str, ...]  # PromQL; "{S}" is replaced by SEL, "[R]" by [$__rate_interval]
    kind: str = "timeseries"  # timeseries | stat | heatmap
    unit: str = "short"
    legend: str = ""
    width: int = 8
    description: str = ""
    legends: tuple[str, ...] = ()  # one per expression, instead of `legend`


@dataclass(frozen=True)
class Row:
    title: str


def q(expr: str) -> str:
    return expr.replace("{S}", "{" + SEL + "}").replace("{S,", "{" + SEL + ",").replace(
        "[R]", f"[{RATE}]")


def heatmap(title: str, family: str, unit: str = "s", by: str = "", description: str = ""
            ) -> Panel:
    """A heatmap of a histogram's buckets (rate per bucket, Grafana reads `le`)."""
    extra = f", {by}" if by else ""
    return Panel(title, (f"sum by (le{extra}) (rate({family}_bucket{{S}}[R]))",),
                 kind="heatmap", unit=unit, legend="{{le}}", description=description)


def quantile(title: str, family: str, by: str, unit: str = "s", width: int = 8) -> Panel:
    exprs = tuple(f"histogram_quantile({p}, sum by (le, {by}) (rate({family}_bucket{{S}}[R])))"
                  for p in ("0.5", "0.99"))
    legends = tuple(f"{p} {{{{{by}}}}}" for p in ("p50", "p99"))
    return Panel(title, exprs, unit=unit, legends=legends, width=width)


SERVICE_HOST: list[Panel | Row] = [
    Row("mwibot: credential freshness"),
    Panel("Soonest credential expiry", ("min(mwibot_output_expiry_seconds{S})",),
          kind="stat", unit="s", width=6),
    Panel("Renewal failures (1h)",
          ('sum(increase(mwibot_renewals_total{S,result="failure"}[1h]))',),
          kind="stat", width=6),
    Panel("Seconds until credential expiry, per output",
          ("mwibot_output_expiry_seconds{S}",), unit="s", legend="{{instance}} {{output}}",
          width=12),
    Panel("Time since last successful renewal, per output",
          ("time() - mwibot_output_last_renewal_timestamp_seconds{S}",), unit="s",
          legend="{{instance}} {{output}}"),
    Panel("Renewals per second, by result",
          ("sum by (result) (rate(mwibot_renewals_total{S}[R]))",), unit="ops",
          legend="{{result}}"),
    Panel("Local proxy credentials: seconds until expiry",
          ("mwibot_proxy_credentials_expiry_timestamp_seconds{S} - time()",), unit="s",
          legend="{{instance}} {{service}}"),
    Panel("Task iterations failed per second (tbot names)",
          ("sum by (service, name) (rate(tbot_task_iterations_failed{S}[R]))",), unit="ops",
          legend="{{service}} {{name}}", width=12),
    quantile("Task iteration duration", "tbot_task_iteration_duration_seconds", "service",
             width=12),
    Row("Local proxy: throughput and connections"),
    Panel("Throughput", (
        "sum by (service, direction) (rate(mwibot_proxy_transmit_bytes_total{S}[R]))",),
        unit="Bps", legend="{{service}} {{direction}}"),
    Panel("New connections per second, by result",
          ("sum by (service, result) (rate(mwibot_proxy_connections_total{S}[R]))",),
          unit="ops", legend="{{service}} {{result}}"),
    Panel("Active connections", ("sum by (service, mode) (mwibot_proxy_connections_active{S})",),
          legend="{{service}} {{mode}}"),
    Panel("Refusals per second, by reason",
          ("sum by (service, reason) (rate(mwibot_proxy_refusals_total{S}[R]))",), unit="ops",
          legend="{{service}} {{reason}}"),
    Panel("Upstream dial failures per second",
          ("sum by (service, mode) (rate(mwibot_proxy_upstream_dial_failures_total{S}[R]))",),
          unit="ops", legend="{{service}} {{mode}}"),
    quantile("Connection duration", "mwibot_proxy_connection_duration_seconds", "service"),
    Row("Local proxy: latency"),
    heatmap("First byte (accept to the database's first answer)",
            "mwibot_proxy_first_byte_duration_seconds"),
    heatmap("Upstream dial (TCP + TLS to the cluster proxy)",
            "mwibot_proxy_upstream_dial_duration_seconds"),
    quantile("First byte p50 / p99", "mwibot_proxy_first_byte_duration_seconds", "service"),
]

CLUSTER_PROXY: list[Panel | Row] = [
    Row("Sessions per database"),
    Panel("Throughput per database", (
        "sum by (service, direction) (rate(mwiproxy_db_transmit_bytes_total{S}[R]))",),
        unit="Bps", legend="{{service}} {{direction}}"),
    Panel("Active sessions", ("sum by (service, mode) (mwiproxy_db_connections_active{S})",),
          legend="{{service}} {{mode}}"),
    Panel("New connections per second, by result",
          ("sum by (service, result) (rate(mwiproxy_db_connections_total{S}[R]))",),
          unit="ops", legend="{{service}} {{result}}"),
    Panel("Closed sessions per second, by reason",
          ("sum by (reason) (rate(mwiproxy_db_connections_closed_total{S}[R]))",), unit="ops",
          legend="{{reason}}"),
    Panel("Upstream dial failures per second",
          ("sum by (service) (rate(mwiproxy_db_upstream_dial_failures_total{S}[R]))",),
          unit="ops", legend="{{service}}"),
    quantile("Session duration", "mwiproxy_db_session_duration_seconds", "service"),
    Row("Refusals"),
    Panel("Refusals per second, by reason",
          ("sum by (protocol, reason) (rate(mwiproxy_refusals_total{S}[R]))",), unit="ops",
          legend="{{protocol}} {{reason}}", width=12),
    Panel("Handshakes in progress", ("sum by (instance) (mwiproxy_connections_unauthenticated{S})",),
          legend="{{instance}}", width=12),
    Row("Latency"),
    heatmap("First byte (accept to the database's first answer)",
            "mwiproxy_db_first_byte_duration_seconds"),
    heatmap("Upstream dial (TCP + TLS to the database or agent)",
            "mwiproxy_db_upstream_dial_duration_seconds"),
    heatmap("TLS handshake", "mwiproxy_tls_handshake_duration_seconds"),
    quantile("First byte p50 / p99 per database", "mwiproxy_db_first_byte_duration_seconds",
             "service"),
    quantile("Upstream dial p50 / p99 per database",
             "mwiproxy_db_upstream_dial_duration_seconds", "service"),
    quantile("TLS handshake p50 / p99 per listener", "mwiproxy_tls_handshake_duration_seconds",
             "listener"),
]

AUTH: list[Panel | Row] = [
    Row("Issuance"),
    Panel("Certificates issued per second, by kind",
          ("sum by (kind) (rate(mwiproxy_auth_certificates_issued_total{S}[R]))",), unit="ops",
          legend="{{kind}}"),
    heatmap("Certificate issue duration", "mwiproxy_auth_certificate_issue_duration_seconds"),
    quantile("Certificate issue duration p50 / p99 by kind",
             "mwiproxy_auth_certificate_issue_duration_seconds", "kind"),
    Panel("Bot renewals per second, by result",
          ("sum by (result) (rate(mwiproxy_auth_renewals_total{S}[R]))",), unit="ops",
          legend="{{result}}"),
    Panel("API requests per second, by result",
          ("sum by (method, result) (rate(mwiproxy_auth_requests_total{S}[R]))",), unit="ops",
          legend="{{method}} {{result}}", width=16),
    Row("Joins and locks"),
    Panel("Joins (in the interval), by role and result",
          ("sum by (role, result) (increase(mwiproxy_auth_joins_total{S}[R]))",),
          legend="{{role}} {{result}}"),
    Panel("Active locks", ("max(mwiproxy_auth_locks_active{S})",), kind="stat"),
    Panel("Registered agents", ("max(mwiproxy_auth_agents_registered{S})",), kind="stat"),
    Row("Audit log"),
    Panel("Audit events written / dropped per second", (
        "sum(rate(mwiproxy_audit_events_total{S}[R]))",
        "sum(rate(mwiproxy_audit_events_dropped_total{S}[R]))"), unit="ops", legends=("written", "dropped")),
    Panel("Audit queue", ("sum by (instance) (mwiproxy_audit_queue_events{S})",),
          legend="{{instance}}"),
    heatmap("Audit batch write duration", "mwiproxy_audit_write_duration_seconds"),
    Row("Database agents"),
    Panel("Agent heartbeats per second, by result",
          ("sum by (instance, result) (rate(mwiproxy_agent_heartbeats_total{S}[R]))",),
          unit="ops", legend="{{instance}} {{result}}", width=12),
    Panel("Agent identity: seconds until expiry",
          ("mwiproxy_agent_identity_expiry_timestamp_seconds{S} - time()",), unit="s",
          legend="{{instance}}", width=12),
]

DASHBOARDS = {
    "mwiproxy-service-host": ("mwiproxy: service host (local proxy and mwibot)", SERVICE_HOST),
    "mwiproxy-cluster-proxy": ("mwiproxy: cluster proxy and database agents", CLUSTER_PROXY),
    "mwiproxy-auth": ("mwiproxy: auth service", AUTH),
}


def _target(expr: str, legend: str, ref: str, heat: bool) -> dict[str, object]:
    t: dict[str, object] = {"refId": ref, "datasource": DS, "expr": q(expr),
                            "legendFormat": legend or "__auto"}
    if heat:
        t["format"] = "heatmap"
    return t


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, object]:
    heat = p.kind == "heatmap"
    out: dict[str, object] = {
        "id": pid, "type": p.kind, "title": p.title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": 5 if p.kind == "stat" else 8},
        "targets": [_target(e, p.legends[i] if p.legends else p.legend, chr(ord("A") + i),
                            heat) for i, e in enumerate(p.exprs)],
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
    }
    if p.description:
        out["description"] = p.description
    if heat:
        out["options"] = {"calculate": False, "yAxis": {"unit": p.unit},
                          "cellGap": 1, "color": {"scheme": "Oranges", "mode": "scheme"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}}
    return out


def _variable(name: str, query: str) -> dict[str, object]:
    return {"name": name, "type": "query", "datasource": DS, "query": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {}}


def dashboard(uid: str, title: str, items: list[Panel | Row]) -> dict[str, object]:
    """One dashboard; its job and instance lists come from Prometheus's `up` (every scrape
    target), whatever the jobs are called."""
    panels: list[dict[str, object]] = []
    x = y = 0
    for pid, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += 8 if x else 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
            x, y = 0, y + 1
            continue
        if x + item.width > 24:
            x, y = 0, y + 8
        panels.append(_panel(item, pid, x, y))
        x += item.width
    return {
        "uid": uid, "title": title, "tags": ["mwiproxy"], "timezone": "utc",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
            _variable("job", "label_values(up, job)"),
            _variable("instance", 'label_values(up{job=~"$job"}, instance)'),
        ]},
        "panels": panels,
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid, title, items), indent=2) + "\n"
            for uid, (title, items) in DASHBOARDS.items()}


def main() -> int:
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
