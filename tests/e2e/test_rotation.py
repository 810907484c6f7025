"""The cluster's own certificates rotate themselves while it runs: a cluster whose
proxy certificate, agent-link identity and admin identity live 8 seconds (renewed at a
quarter of that, so what a slow client read is still valid when it uses it) and an
agent whose identity lives 10 goes through several rotations of each,
while psql sessions opened before the first rotation keep running queries and new
connections — tunnel mode, non-tunnel mode, through the agent, `mwictl` — succeed
throughout. Clients' own certificates (the bot's) are long-lived here: sessions are cut
when those expire, not when ours rotate."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from mwiproxy.wire import agentlink, alpn
from tests._testbase import postgres
from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests.e2e.conftest import CLUSTER_YAML, LocalProxyProcess, Topology, start_topology

pytestmark = pytest.mark.integration

TTL = 8  # seconds: proxy certificate, link identity, admin identity
ROTATING = CLUSTER_YAML.replace("  ping_interval: 1s\n", (
    f"  certificate_ttl: {TTL}s\n  link_certificate_ttl: {TTL}s\n  renew_at: 0.25\n"
    f"auth:\n  admin_identity_ttl: {TTL}s\n"))
ROTATIONS = 3
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass
class Rig:
    topo: Topology
    agent: Agent
    out: Path  # the bot's database output for the cluster's own database
    agent_out: Path
    tunnel: LocalProxyProcess
    passthrough: LocalProxyProcess
    agent_tunnel: LocalProxyProcess
    serials: dict[str, set[int]] = field(default_factory=dict)

    def saw(self, what: str, cert: x509.Certificate) -> None:
        self.serials.setdefault(what, set()).add(cert.serial_number)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path_factory.mktemp("rotation"), ROTATING) as topo:
        agent = Agent(topo, "rot", service_extra="  certificate_ttl: 10s\n")
        try:
            agent.start(token=db_token(topo))
            out = topo.bot_output("rot", ttl="1h")
            agent_out = topo.bot_output("rot-agent", ttl="1h", service=AGENT_SERVICE)
            yield Rig(topo, agent, out, agent_out, topo.local_proxy(out, tunnel=True),
                      topo.local_proxy(out, tunnel=False),
                      topo.local_proxy(agent_out, tunnel=True, service=AGENT_SERVICE))
        finally:
            for lp in topo.proxies:  # before the agent: their sessions run through it
                lp.stop()
            agent.stop()


def _tls_peer(addr: tuple[str, int], ctx: ssl.SSLContext, name: str) -> x509.Certificate:
    with socket.create_connection(addr, timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname=name) as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def proxy_cert(rig: Rig, protocol: str) -> x509.Certificate:
    """The certificate a new connection to the cluster port gets for an ALPN name."""
    ctx = ssl.create_default_context(cadata=rig.topo.host_ca.decode())
    ctx.set_alpn_protocols([protocol])
    return _tls_peer(("127.0.0.1", rig.topo.cluster.port), ctx, "localhost")


def inner_cert(rig: Rig) -> x509.Certificate:
    """The certificate of the inner TLS a client runs through a non-tunnel local proxy."""
    ctx = ssl.create_default_context(cafile=f"{rig.out}/teleport-host-ca.crt")
    ctx.load_cert_chain(f"{rig.out}/tlscert", f"{rig.out}/key")
    with socket.create_connection(("127.0.0.1", rig.passthrough.port), timeout=10) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def agent_cert(rig: Rig) -> x509.Certificate:
    """The agent's server certificate on its link port (the admin identity gets through
    the handshake; the agent then refuses it as no proxy, which is fine here)."""
    data = rig.topo.cluster.data_dir
    ctx = ssl.create_default_context(cafile=str(data / "ca" / "agent.crt"))
    # OpenSSL opens a file twice (certificate, then key): the rotation replaces this one
    # every 2 s, so read it once (as mwictl does) and load that copy.
    pem = (data / "admin" / "identity").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "identity"
        copy.write_bytes(pem)
        ctx.load_cert_chain(str(copy))
    ctx.set_alpn_protocols([agentlink.ALPN])
    return _tls_peer(("127.0.0.1", rig.agent.port), ctx, "127.0.0.1")


def admin_identity(rig: Rig) -> x509.Certificate:
    path = rig.topo.cluster.data_dir / "admin" / "identity"
    assert path.stat().st_mode & 0o777 == 0o600
    return x509.load_pem_x509_certificate(path.read_bytes())


def link_renewals(rig: Rig) -> int:
    text = rig.topo.cluster.log.read_text()
    return len(re.findall(r"the proxy's identity towards database agents renewed", text))


def new_connections(rig: Rig) -> None:
    topo = rig.topo
    for dsn in (topo.dsn(rig.tunnel), topo.dsn(rig.passthrough, rig.out),
                topo.dsn(rig.agent_tunnel)):
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select 40 + 2").fetchone() == (42,)
    status = topo.cluster.ctl("status")  # mwictl with the current admin identity
    assert "mwiproxy.local" in status.stdout


def observe(rig: Rig) -> None:
    rig.saw("proxy (database ALPN)", proxy_cert(rig, alpn.POSTGRES))
    rig.saw("proxy (auth API)", proxy_cert(rig, alpn.AUTH))
    rig.saw("inner TLS", inner_cert(rig))
    rig.saw("agent link server", agent_cert(rig))
    rig.saw("admin identity", admin_identity(rig))


def test_every_certificate_rotates_under_open_sessions(rig: Rig) -> None:
    topo = rig.topo
    sessions = [psycopg.connect(dsn, autocommit=True) for dsn in (
        topo.dsn(rig.tunnel), topo.dsn(rig.passthrough, rig.out), topo.dsn(rig.agent_tunnel))]
    try:
        pids = [s.execute("select pg_backend_pid()").fetchone() for s in sessions]
        start, rounds = time.monotonic(), 0
        while (min(map(len, rig.serials.values()), default=0) <= ROTATIONS
               or link_renewals(rig) < ROTATIONS):
            assert time.monotonic() - start < 120, (rig.serials, link_renewals(rig))
            observe(rig)
            new_connections(rig)
            for s in sessions:  # the sessions from before the first rotation go on
                assert s.execute("select count(*) from generate_series(1, 1000)"
                                 ).fetchone() == (1000,)
            rounds += 1
        assert [s.execute("select pg_backend_pid()").fetchone() for s in sessions] == pids
    finally:
        for s in sessions:
            s.close()
    # long after the first certificates expired, all of this still worked on new ones
    assert set(rig.serials) == {"proxy (database ALPN)", "proxy (auth API)", "inner TLS",
                                "agent link server", "admin identity"}
    assert all(len(s) > ROTATIONS for s in rig.serials.values()), rig.serials
    # one certificate behind the database ALPNs, the auth API and the inner TLS
    assert (rig.serials["proxy (database ALPN)"] & rig.serials["proxy (auth API)"]
            & rig.serials["inner TLS"])
    assert rounds > ROTATIONS
