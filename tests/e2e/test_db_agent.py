"""A database served by a separate agent (`mwiproxy start --roles=db`): join with a `db`
token, heartbeat, sessions through the cluster proxy and the agent in both modes, cancel,
the agent's own checks, and registration that ends with the agent (goodbye on SIGTERM,
heartbeat expiry after SIGKILL). The database is the topology's real PostgreSQL, served
under a second name by the agent."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from mwiproxy.auth.client import AuthClient
from mwiproxy.auth.errors import AuthError
from mwiproxy.dbagent import state
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests._testbase.ports import free_port
from tests.e2e.conftest import LocalProxyProcess, Topology, wait_for
from tests.e2e.test_postgres_cancel_and_load import _cancel_sleep

pytestmark = pytest.mark.integration


def served(topo: Topology) -> dict[str, list[str]]:
    out = topo.cluster.ctl("db", "ls", "--format", "json").stdout
    return {d["name"]: d.get("agents", []) for d in json.loads(out)}


@pytest.fixture(scope="module")
def agent(topo: Topology):
    a = Agent(topo, "one", service_extra=f"  diag_addr: 127.0.0.1:{free_port()}\n")
    a.start(token=db_token(topo))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def agent_out(topo: Topology, agent: Agent) -> Path:
    return topo.bot_output("via-agent", service=AGENT_SERVICE)


@pytest.fixture(scope="module")
def agent_tunnel(topo: Topology, agent_out: Path) -> LocalProxyProcess:
    return topo.local_proxy(agent_out, tunnel=True, service=AGENT_SERVICE)


def test_the_agent_registers_its_database(topo, agent):
    listing = served(topo)
    assert listing[AGENT_SERVICE], listing  # named with the agent that serves it
    assert listing["example-server"] == []  # the cluster's own
    agents = json.loads(topo.cluster.ctl("agents", "ls", "--format", "json").stdout)
    assert [a["databases"] for a in agents] == [[AGENT_SERVICE]]
    assert topo.audit("agent.join") and topo.audit("agent.register")
    state = agent.data_dir / "agent"
    assert state.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in state.iterdir())


def test_the_agent_reports_its_health(topo, agent):
    diag = re.search(r"diag_addr: (\S+)", agent.config.read_text())
    assert diag is not None
    base = f"http://{diag.group(1)}"
    with urllib.request.urlopen(f"{base}/livez", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as r:
        ready = json.loads(r.read())
    assert ready["status"] == "healthy", ready
    assert AGENT_SERVICE in ready["services"]["db_service"]["reason"]


def test_psql_through_the_agent_in_both_modes(topo, agent, agent_out, agent_tunnel):
    res = topo.psql(topo.dsn(agent_tunnel), "select current_user, current_database()")
    assert res.stdout.strip() == "alice|example-db", res.stderr
    passthrough = topo.local_proxy(agent_out, tunnel=False, service=AGENT_SERVICE)
    res = topo.psql(topo.dsn(passthrough, agent_out), "select 40 + 2")
    assert res.stdout.strip() == "42", res.stderr
    starts = [e for e in topo.audit("db.session.start") if e["db_service"] == AGENT_SERVICE]
    assert starts and all(e["success"] for e in starts)
    # the agent's database certificate came with a session grant, and says for which
    issued = [e for e in topo.audit("cert.create") if e.get("usage") == "db_client"]
    assert issued and {e["session_id"] for e in issued} <= {e["session_id"] for e in starts}
    assert all((e["db_service"], e["db_user"], e["db_name"]) == (
        AGENT_SERVICE, "alice", "example-db") for e in issued), issued


def test_a_rogue_agent_gets_no_database_certificate(topo, agent):
    """A stolen db join token makes a registered agent, not a superuser: without a grant
    from a session the proxy authorized, `agent_sign_db_client` signs nothing."""
    key = generate_private_key()
    with AuthClient(topo.cluster.addr, ca_pems=topo.host_ca) as anon:
        joined = anon.call("agent_join", token=db_token(topo), hostname="rogue",
                           public_key=public_key_pem(key.public_key()).decode())
    rogue = {"db_user": "postgres", "public_key": public_key_pem(
        generate_private_key().public_key()).decode()}
    with AuthClient(topo.cluster.addr, ca_pems=topo.host_ca, cert_pem=joined["cert"].encode(),
                    key_pem=private_key_pem(key)) as c:
        c.call("agent_heartbeat", addr="127.0.0.1:9", hostname="rogue", databases=[
            {"name": "rogue-db", "protocol": "postgres", "uri": f"127.0.0.1:{topo.pg.port}"}])
        try:
            for params in ({"service": AGENT_SERVICE}, {"service": "rogue-db"},
                           {"service": "rogue-db", "grant": "guessed"}):
                with pytest.raises(AuthError, match="sign_db_client refused"):
                    c.call("agent_sign_db_client", **rogue, **params)
        finally:
            c.call("agent_goodbye")
    denied = [e for e in topo.audit("agent.sign.denied") if e["host_id"] == joined["host_id"]]
    assert [(e["db_user"], e["db_service"]) for e in denied] == [
        ("postgres", AGENT_SERVICE), ("postgres", "rogue-db"), ("postgres", "rogue-db")]
    assert "no grant" in str(denied[0]["reason"])
    assert not [e for e in topo.audit("cert.create")
                if e.get("usage") == "db_client" and e.get("host_id") == joined["host_id"]]


def test_cancel_and_refusals_through_the_agent(topo, agent, agent_tunnel):
    assert _cancel_sleep(topo.dsn(agent_tunnel)) < 10
    res = topo.psql(topo.dsn(agent_tunnel, user="bob"), "select 1")
    assert 'access to db denied: the certificate is for database user "alice"' in res.stderr


def test_pgbench_through_the_agent(topo, agent, agent_tunnel):
    env = {"PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-h", "127.0.0.1", "-p",
                           str(agent_tunnel.port), "-U", "alice", "example-db"],
                          capture_output=True, text=True, timeout=120, env={**_env(), **env})
    assert init.returncode == 0, init.stderr
    run = subprocess.run(["pgbench", "-c", "4", "-t", "50", "-h", "127.0.0.1", "-p",
                          str(agent_tunnel.port), "-U", "alice", "example-db"],
                         capture_output=True, text=True, timeout=120, env={**_env(), **env})
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout, run.stdout


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_the_agent_serves_only_cluster_proxies(topo, agent, agent_out):
    """A client certificate from the cluster's user CA is not a proxy's: the agent closes
    the link without a word, and says why in its log."""
    ctx = ssl.create_default_context(cafile=str(topo.cluster.data_dir / "ca" / "agent.crt"))
    ctx.load_cert_chain(agent_out / "tlscert", agent_out / "key")
    ctx.set_alpn_protocols(["mwi-agent"])
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"\x00\x00\x00\x02{}")
        assert tls.recv(100) == b""
    assert wait_for(lambda: "is not a cluster proxy" in agent.log.read_text())


def test_an_agent_cannot_pose_as_the_cluster_proxy(topo, agent):
    """Its server certificate comes from the agent CA, which bots, mwictl and local
    proxies never trust: dialing the agent as if it were the cluster fails verification."""
    with pytest.raises(AuthError, match="not trusted"), \
            AuthClient(f"127.0.0.1:{agent.port}", ca_pems=topo.host_ca) as client:
        client.call("ping")


def test_a_join_token_works_once(topo, agent):
    token = db_token(topo)
    first = Agent(topo, "spent")
    first.start(token=token)
    first.stop()
    again = Agent(topo, "reuse")
    proc = again.start(token=token, expect_ready=False)
    assert proc.wait(30) == 1
    assert "join refused" in again.log.read_text()


def test_registration_ends_with_the_agent(topo, agent_out):
    """SIGTERM: goodbye, gone at once. SIGKILL: gone when the heartbeat runs out. A
    restarted agent comes back with its stored identity (no new token)."""
    b = Agent(topo, "two")
    b.start(token=db_token(topo))
    assert wait_for(lambda: len(served(topo).get(AGENT_SERVICE, [])) == 2, timeout=10)
    b.stop(signal.SIGTERM)
    assert len(served(topo)[AGENT_SERVICE]) == 1  # the other agent still serves it

    b.start()  # stored identity, no token
    assert wait_for(lambda: len(served(topo).get(AGENT_SERVICE, [])) == 2, timeout=10)
    b.stop(signal.SIGKILL)
    assert len(served(topo)[AGENT_SERVICE]) == 2
    started = time.monotonic()
    assert wait_for(lambda: len(served(topo)[AGENT_SERVICE]) == 1, timeout=15)
    assert time.monotonic() - started < 10  # the 3 s heartbeat TTL, not forever
    assert topo.audit("agent.goodbye")


def test_the_agent_renews_its_identity_and_keeps_serving(topo, agent_out):
    """A 12 s identity renewed at half-life: each renewal is the next generation, saved
    to disk (0600), with no generation mismatch along the way."""
    r = Agent(topo, "renewing", service_extra="  certificate_ttl: 12s\n")
    r.start(token=db_token(topo))
    try:
        ident = state.load(r.data_dir)
        assert ident is not None
        host_id = ident.host_id
        first = (r.data_dir / "agent" / "identity").read_bytes()
        assert wait_for(lambda: len([e for e in topo.audit("agent.renew")
                                     if e["host_id"] == host_id]) >= 2, timeout=30)
        gens = [e["generation"] for e in topo.audit("agent.renew") if e["host_id"] == host_id]
        assert gens[:2] == [2, 3]
        assert (r.data_dir / "agent" / "identity").read_bytes() != first
        assert (r.data_dir / "agent" / "identity").stat().st_mode & 0o777 == 0o600
        assert not topo.audit("agent.generation_mismatch")
    finally:
        r.stop()


def test_a_dead_agents_database_is_refused_clearly(topo, agent, agent_tunnel):
    with psycopg.connect(topo.dsn(agent_tunnel), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        agent.stop(signal.SIGKILL)
        # a live session through a dead agent ends; the client is told the connection ended
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    assert wait_for(lambda: AGENT_SERVICE not in served(topo), timeout=15)
    res = topo.psql(topo.dsn(agent_tunnel), "select 1")
    assert "access to db denied" in res.stderr and AGENT_SERVICE in res.stderr, res.stderr
    agent.start()  # back with its stored identity
    assert wait_for(lambda: AGENT_SERVICE in served(topo), timeout=10)
    res = topo.psql(topo.dsn(agent_tunnel), "select 1")
    assert res.stdout.strip() == "1", res.stderr
