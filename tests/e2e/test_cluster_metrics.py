"""The cluster's and the agent's /metrics after real sessions (tunnel, non-tunnel, one
through an agent) and refusals, and the cluster's one log line per closed session."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mwiproxy.devkit import postgres
from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests._testbase.ports import free_port
from tests.e2e.conftest import CLUSTER_YAML, SERVICE, Topology, start_topology, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(addr: str) -> tuple[Samples, set[str]]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, {name for name, _ in samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` that carry `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    diag = f"127.0.0.1:{free_port()}"
    template = CLUSTER_YAML + f"diag_addr: {diag}\n"
    with start_topology(tmp_path_factory.mktemp("metrics"), template) as t:
        t.diag = diag  # type: ignore[attr-defined]
        yield t


@pytest.fixture(scope="module")
def agent(topo: Topology) -> Iterator[Agent]:
    a = Agent(topo, "one", service_extra=f"  diag_addr: 127.0.0.1:{free_port()}\n")
    a.start(token=db_token(topo))
    yield a
    a.stop()


def agent_diag(agent: Agent) -> str:
    found = re.search(r"diag_addr: (\S+)", agent.config.read_text())
    assert found is not None
    return found.group(1)


def test_metrics_after_sessions_and_refusals(topo: Topology, agent: Agent) -> None:
    diag: str = topo.diag  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://{diag}/readyz", timeout=10) as r:
        assert r.status == 200
    out = topo.bot_output("metrics-bot")
    tunnel = topo.local_proxy(out, tunnel=True)
    passthrough = topo.local_proxy(out, tunnel=False)
    assert topo.psql(topo.dsn(tunnel), "select 1").stdout.strip() == "1"
    assert topo.psql(topo.dsn(passthrough, out), "select 2").stdout.strip() == "2"
    via = topo.local_proxy(topo.bot_output("metrics-agent", service=AGENT_SERVICE),
                           tunnel=True, service=AGENT_SERVICE)
    assert topo.psql(topo.dsn(via), "select 3").stdout.strip() == "3"
    big = "select repeat('x', 200000)"  # the answer's bytes, counted by the relay engine
    assert len(topo.psql(topo.dsn(tunnel), big).stdout.strip()) == 200000
    assert len(topo.psql(topo.dsn(via), big).stdout.strip()) == 200000
    # refused: the certificate is for user alice, the startup asks for bob
    refused = topo.psql(topo.dsn(tunnel, user="bob"), "select 1")
    assert refused.returncode != 0

    def settled() -> bool:  # every session closed and counted
        s, _ = scrape(diag)
        return value(s, "mwiproxy_db_connections_closed_total") >= 5 and \
            value(s, "mwiproxy_db_connections_active") == 0
    assert wait_for(settled, timeout=60), scrape(diag)[0]
    s, names = scrape(diag)
    db = "mwiproxy_db_connections_total"
    assert value(s, db, service=SERVICE, mode="tunnel", result="success") >= 1
    assert value(s, db, service=SERVICE, mode="non_tunnel", result="success") >= 1
    assert value(s, db, service=AGENT_SERVICE, mode="tunnel", result="success") >= 1
    assert value(s, db, service=SERVICE, result="refused") >= 1
    assert value(s, "mwiproxy_refusals_total", protocol="postgres",
                 reason="access_denied") >= 1
    for hist in ("mwiproxy_db_session_duration_seconds",
                 "mwiproxy_db_first_byte_duration_seconds"):
        assert value(s, f"{hist}_count", service=SERVICE) >= 2, hist
    assert value(s, "mwiproxy_db_upstream_dial_duration_seconds_count",
                 service=AGENT_SERVICE) >= 1
    assert value(s, "mwiproxy_tls_handshake_duration_seconds_count",
                 listener="cluster") >= 4
    assert ("mwiproxy_connections_unauthenticated", frozenset()) in s
    assert value(s, "mwiproxy_auth_certificates_issued_total", kind="bot") >= 2
    assert value(s, "mwiproxy_auth_certificates_issued_total", kind="db_client") >= 2
    assert value(s, "mwiproxy_auth_joins_total", role="bot", result="success") >= 2
    assert value(s, "mwiproxy_auth_joins_total", role="db", result="success") >= 1
    assert value(s, "mwiproxy_auth_requests_total", method="join", result="success") >= 2
    assert value(s, "mwiproxy_audit_events_total") >= 1
    assert value(s, "mwiproxy_audit_write_duration_seconds_count") >= 1
    assert value(s, "mwiproxy_auth_agents_registered") == 1
    sent = "mwiproxy_db_transmit_bytes_total"
    assert value(s, sent, service=SERVICE, mode="tunnel", direction="server_to_client") \
        >= 200000
    assert value(s, sent, service=SERVICE, mode="tunnel", direction="client_to_server") > 0
    assert value(s, sent, service=AGENT_SERVICE, direction="server_to_client") >= 200000
    assert "process_cpu_seconds_total" in names
    assert not [n for n in names if n.endswith("_created")]
    assert not [k for _, ls in s for k, _ in ls if k in ("remote", "peer", "addr", "user")]

    a, a_names = scrape(agent_diag(agent))
    assert value(a, db, service=AGENT_SERVICE, mode="tunnel", result="success") >= 1
    assert value(a, "mwiproxy_db_connections_active") == 0 or wait_for(
        lambda: value(scrape(agent_diag(agent))[0], "mwiproxy_db_connections_active") == 0,
        timeout=60)
    assert value(a, sent, service=AGENT_SERVICE, direction="server_to_client") >= 200000
    assert value(a, "mwiproxy_agent_heartbeats_total", result="success") >= 1
    # the cluster's link connections: mutual TLS handshaken on the agent's acceptor
    assert value(a, "mwiproxy_tls_handshake_duration_seconds_count",
                 listener="agent_link") >= 1
    assert value(a, "mwiproxy_agent_identity_expiry_timestamp_seconds") > 0
    assert not [n for n in a_names if n.endswith("_created")]


def test_one_log_line_per_closed_session(topo: Topology) -> None:
    out = topo.bot_output("log-bot")
    tunnel = topo.local_proxy(out, tunnel=True)
    assert topo.psql(topo.dsn(tunnel), "select 4").stdout.strip() == "4"
    log: Path = topo.cluster.log

    def line() -> list[str]:
        return [ln for ln in log.read_text().splitlines()
                if "closed: bot-log-bot (bot log-bot)" in ln]
    assert wait_for(lambda: line(), timeout=60), log.read_text()[-3000:]
    (found,) = line()
    assert "as alice@example-db on example-server (postgres, tunnel)" in found
    assert re.search(r"\d+ bytes to the database, \d+ from it", found), found
