"""A real Prometheus (Debian's) scraping a live topology under a small pgbench load:
cluster (its `diag_addr`), database agent (`db_service.diag_addr`), bot (`mwibot start
--diag-addr`) and two local proxies (`mwibot proxy --diag-addr`), with the project's
alert rules loaded. Every dashboard panel's expression returns data through the HTTP
API, every rule is evaluated, and stopping the cluster fires MwibotRenewalsFailing for
real.

Until the cluster has a `diag_addr` (and the cluster, agent and local proxy families
exist), only what the bot exports is checked; the rest skips, naming the reason."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.devkit import postgres
from mwiproxy.devkit.processes import terminate
from mwiproxy.metrics import names
from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests._testbase.ports import free_port
from tests.e2e.conftest import CLUSTER_YAML, SERVICE, Topology, wait_for
from tests.e2e.test_localproxy_service import _get

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
RULE_FILES = sorted((GRAFANA / "alerts").glob("*.rules.yml"))
METRIC = re.compile(r"\b((?:tbot|mwibot|mwiproxy)_[a-z_]+)\b")
BOT_METRICS = set(names.ALL_NAMES)
# The bot renews its output every 2 s, so a failure follows the cluster's stop within
# seconds; the rule itself (no `for`, 15m window) is the production rule, unchanged.
RENEWAL_INTERVAL = "2s"
CLUSTER_HAS_DIAG = "diag_addr" in {f.name for f in dataclasses.fields(ClusterConfig)}
HAS_RELAY_BYTES = importlib.util.find_spec("mwiproxy.metrics.relaybytes") is not None
NO_CLUSTER_METRICS = ("the cluster has no diag_addr yet (cluster.yaml refuses it): the "
                      "cluster, agent and auth families are not exported on this branch")
NO_RELAY_BYTES = ("no mwiproxy.metrics.relaybytes yet (native byte counters): the local "
                  "proxy families and *_transmit_bytes_total are not exported on this branch")


@dataclasses.dataclass
class Stack:
    topo: Topology
    prom: str  # http://127.0.0.1:PORT
    jobs: dict[str, list[str]]  # job -> targets
    bot_log: Path
    load: list[tuple[subprocess.Popen[bytes], Path]]  # pgbench runs and their logs
    proxy_port: int  # a local proxy (tunnel mode) of the bot's output


def _api(prom: str, path: str, **params: str) -> Any:
    url = f"{prom}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # a bad query: 400 with the error in the body
        return json.loads(e.read())


def _start_prometheus(root: Path, jobs: dict[str, list[str]], stack: ExitStack) -> str:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                           for job, targets in jobs.items()],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = root / "prometheus.log"
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    stack.callback(terminate, proc)
    ready = wait_for(lambda: _get(port, "/-/ready")[0] == 200, timeout=60, step=0.2)
    assert ready, log.read_text()
    return f"http://127.0.0.1:{port}"


def _start_bot(topo: Topology, diag: int, stack: ExitStack) -> tuple[Path, Path]:
    """`mwibot start -c tbot.yaml` renewing a database output every RENEWAL_INTERVAL;
    (output, log). The bot identity keeps the default 20m interval: renewed in the same
    seconds as the output, the output's issue can meet a bot identity renewed meanwhile
    (a stale-generation refusal, retried) - a real failure the alert would count."""
    out, log, conf = (topo.root / "prom-bot-out", topo.root / "prom-bot.log",
                      topo.root / "prom-tbot.yaml")
    conf.write_text(yaml.safe_dump({
        "version": "v2", "proxy_server": topo.cluster.addr, "diag_addr": f"127.0.0.1:{diag}",
        "onboarding": {"join_method": "token", "token": topo.add_bot("prom-bot"),
                       "ca_pins": [topo.ca_pin]},
        "storage": {"type": "directory", "path": str(topo.root / "prom-bot")},
        "services": [{"type": "database", "destination": str(out), "service": SERVICE,
                      "database": "example-db", "username": "alice", "credential_ttl": "10m",
                      "renewal_interval": RENEWAL_INTERVAL}],
    }))
    proc = subprocess.Popen([sys.executable, "-m", "mwiproxy.cli.mwibot", "start", "-c",
                             str(conf)], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    stack.callback(terminate, proc)
    ready = wait_for(lambda: _get(diag, "/readyz")[0] == 200, timeout=60, step=0.2)
    assert ready, log.read_text()
    return out, log


def _pgbench(topo: Topology, port: int, stack: ExitStack
             ) -> tuple[subprocess.Popen[bytes], Path]:
    """A small background load (a new connection per transaction), bounded in time and
    stopped with the module."""
    args = ["-h", "127.0.0.1", "-p", str(port), "-U", "alice", "example-db"]
    log = topo.root / f"pgbench-{port}.log"
    proc = subprocess.Popen(["pgbench", "-n", "-C", "-c", "2", "-T", "900", *args],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    stack.callback(terminate, proc)
    return proc, log


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package) not installed")
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    from mwiproxy.devkit.topology import start_topology

    root = tmp_path_factory.mktemp("prometheus")
    ports = {job: free_port() for job in ("cluster", "agent", "bot", "proxy", "agent-proxy")}
    template = CLUSTER_YAML + (f"diag_addr: 127.0.0.1:{ports['cluster']}\n"
                               if CLUSTER_HAS_DIAG else "")
    with ExitStack() as es:
        topo = es.enter_context(start_topology(root, template))
        agent = Agent(topo, "prom", service_extra=f"  diag_addr: 127.0.0.1:{ports['agent']}\n")
        agent.start(token=db_token(topo))
        es.callback(agent.stop)
        out, bot_log = _start_bot(topo, ports["bot"], es)
        lp = topo.local_proxy(out, tunnel=True,
                              extra=(f"--diag-addr=127.0.0.1:{ports['proxy']}",))
        agent_lp = topo.local_proxy(topo.bot_output("prom-agent", service=AGENT_SERVICE),
                                    tunnel=True, service=AGENT_SERVICE,
                                    extra=(f"--diag-addr=127.0.0.1:{ports['agent-proxy']}",))
        init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p",
                               str(lp.port), "-U", "alice", "example-db"],
                              capture_output=True, text=True, timeout=120)
        assert init.returncode == 0, init.stderr
        load = [_pgbench(topo, port, es) for port in (lp.port, agent_lp.port)]
        jobs = {"mwiproxy-agent": [f"127.0.0.1:{ports['agent']}"],
                "mwibot": [f"127.0.0.1:{ports['bot']}"],
                "mwibot-proxy": [f"127.0.0.1:{ports['proxy']}",
                                 f"127.0.0.1:{ports['agent-proxy']}"]}
        if CLUSTER_HAS_DIAG:
            jobs["mwiproxy-cluster"] = [f"127.0.0.1:{ports['cluster']}"]
        prom = _start_prometheus(root, jobs, es)
        yield Stack(topo, prom, jobs, bot_log, load, lp.port)


def _panels() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every panel target, with Grafana's
    variables as Grafana would fill them for "All" over a 1 s scrape interval."""
    out = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m")
                expr = re.sub(r"\$(job|instance)\b", ".+", expr)
                out.append((path.stem, panel["title"], expr))
    return out


def _missing_data(prom: str, panels: list[tuple[str, str, str]]) -> list[str]:
    """The panels whose expression errs or returns nothing now."""
    missing = []
    for dash, title, expr in panels:
        res = _api(prom, "query", query=expr)
        assert res["status"] == "success", f"{dash} / {title}: {expr}: {res}"
        if not res["data"]["result"]:
            missing.append(f"{dash} / {title}: {expr}")
    return missing


def _assert_panels_return_data(prom: str, panels: list[tuple[str, str, str]]) -> None:
    assert panels
    # rate() over 1m needs two scrapes and the load a few sessions: poll, bounded
    left: list[str] = []

    def done() -> bool:
        nonlocal left
        left = _missing_data(prom, panels)
        return not left

    assert wait_for(done, timeout=90, step=1.0), "panels without data:\n" + "\n".join(left)


def test_every_process_is_scraped(stack):
    def all_up() -> bool:
        res = _api(stack.prom, "query", query="up")["data"]["result"]
        got = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in res}
        want = {(job, t) for job, targets in stack.jobs.items() for t in targets}
        return set(got) == want and all(v == "1" for v in got.values())

    assert wait_for(all_up, timeout=60, step=0.5), _api(stack.prom, "targets")


def test_every_panel_expression_runs(stack):
    """Every expression (variables filled in) is accepted by Prometheus's query API."""
    _missing_data(stack.prom, _panels())  # asserts status "success" for each


def test_the_bots_panels_return_data(stack):
    """What exists today: every panel reading only mwibot's own families."""
    bot_panels = [p for p in _panels() if set(METRIC.findall(p[2])) <= BOT_METRICS]
    assert len(bot_panels) >= 5
    _assert_panels_return_data(stack.prom, bot_panels)


def _reads_relay_bytes(expr: str) -> bool:
    return any(m.startswith("mwibot_proxy_") or m.endswith("_transmit_bytes_total")
               for m in METRIC.findall(expr))


# With the bot's panels above, the two tests below cover every panel of every dashboard.
@pytest.mark.skipif(not CLUSTER_HAS_DIAG, reason=NO_CLUSTER_METRICS)
def test_the_cluster_agent_and_auth_panels_return_data(stack):
    _refused(stack.topo.cluster.port)  # so the refusal panel shows an event, not only zeros
    panels = [p for p in _panels()
              if not set(METRIC.findall(p[2])) <= BOT_METRICS and not _reads_relay_bytes(p[2])]
    assert len(panels) >= 20
    _assert_panels_return_data(stack.prom, panels)


@pytest.mark.skipif(not CLUSTER_HAS_DIAG, reason=NO_CLUSTER_METRICS)
@pytest.mark.skipif(not HAS_RELAY_BYTES, reason=NO_RELAY_BYTES)
def test_the_local_proxy_and_byte_panels_return_data(stack):
    _refused(stack.proxy_port)  # so the refusal panel shows an event, not only zeros
    panels = [p for p in _panels() if _reads_relay_bytes(p[2])]
    assert len(panels) >= 10
    _assert_panels_return_data(stack.prom, panels)
    # the load went through both the cluster and the agent (bytes since the start)
    query = "sum by (job) (increase(mwiproxy_db_transmit_bytes_total[10m])) > 0"

    def both_moved() -> bool:
        moved = _api(stack.prom, "query", query=query)["data"]["result"]
        return {r["metric"]["job"] for r in moved} == {"mwiproxy-cluster", "mwiproxy-agent"}

    assert wait_for(both_moved, timeout=60, step=1.0), \
        "\n".join(log.read_text() for _, log in stack.load)


def _refused(port: int) -> None:
    """HTTP where TLS or a PostgreSQL startup message is due; read until closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def test_every_alert_rule_is_evaluated(stack):
    want = {r.get("alert") for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]
            for r in g["rules"]}
    rules: list[dict[str, Any]] = []

    def evaluated() -> bool:
        nonlocal rules
        groups = _api(stack.prom, "rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return {r["name"] for r in rules} == want and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules)

    assert wait_for(evaluated, timeout=60, step=0.5), json.dumps(rules, indent=1)


def _renewals_failing(prom: str) -> list[dict[str, Any]]:
    alerts = _api(prom, "alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "MwibotRenewalsFailing"]


def test_stopping_the_cluster_fires_renewals_failing(stack):
    """Runs last: it stops the cluster. The rule is the production one, unchanged."""
    assert _renewals_failing(stack.prom) == []  # healthy so far
    stack.topo.cluster.stop()
    fired = wait_for(lambda: any(a["state"] == "firing" for a in _renewals_failing(stack.prom)),
                     timeout=90, step=0.5)
    assert fired, _api(stack.prom, "alerts")["data"]["alerts"]
    alert = next(a for a in _renewals_failing(stack.prom) if a["state"] == "firing")
    assert alert["labels"]["job"] == "mwibot" and alert["labels"]["result"] == "failure"
    assert "renewal failed" in stack.bot_log.read_text()
