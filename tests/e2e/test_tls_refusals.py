"""Refusals at the cluster port's outer TLS land in the audit log (`tls.refused`), and a
resumed TLS session never extends an identity past its certificate's expiry.

The clients here talk to the cluster port directly (Python's ssl), as an attacker
holding an expired or foreign certificate would, not through `mwibot proxy`."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.wire import alpn
from mwiproxy.wire import postgres as pg
from tests.e2e.conftest import SERVICE, Topology, wait_for

pytestmark = pytest.mark.integration

STARTUP = pg.build_startup({"user": "alice", "database": "example-db"})
TERMINATE = b"X\0\0\0\4"


def _context(topo: Topology, out: Path | None, proto: str | None) -> ssl.SSLContext:
    """TLS 1.3 (tickets are what resumption rides on), trusting the cluster's host CA."""
    ctx = ssl.create_default_context(cadata=topo.host_ca.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if out is not None:
        ctx.load_cert_chain(f"{out}/tlscert", f"{out}/key")
    if proto is not None:
        ctx.set_alpn_protocols([proto])
    return ctx


def _dial(topo: Topology) -> socket.socket:
    host, port = topo.cluster.addr.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _remote(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _expires(out: Path) -> dt.datetime:
    cert = x509.load_pem_x509_certificate((out / "tlscert").read_bytes())
    return cert.not_valid_after_utc


def _sleep_past(when: dt.datetime) -> None:
    time.sleep(max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds() + 0.3))


def _newest(topo: Topology, kind: str) -> int:
    """The id of the newest event of `kind` now (0: none)."""
    return max((int(str(e["id"])) for e in topo.audit(kind)), default=0)


def _events(topo: Topology, kind: str, remote: str, after: int) -> list[dict[str, object]]:
    """The events of `kind` from `remote` newer than event `after` (a client port is
    reused across the module's tests: an older event may share the remote)."""
    found: list[dict[str, object]] = []

    def seen() -> bool:  # the server may finish its side after the client gave up
        found[:] = [e for e in topo.audit(kind)
                    if e.get("remote") == remote and int(str(e["id"])) > after]
        return bool(found)

    wait_for(seen, timeout=30, step=0.2)  # a wide bound: returns as soon as it is seen
    return found


# -- a PostgreSQL client over any object with sendall/recv -------------------------


class _Recv:
    def __init__(self, recv) -> None:  # type: ignore[no-untyped-def]
        self._recv, self._buf = recv, b""

    def exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._recv()
            if not chunk:
                raise ConnectionError(f"closed after {self._buf!r}")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _until_ready_or_error(recv: _Recv) -> tuple[bytes, dict[str, str]]:
    """('Z', {}) once signed in, or ('E', fields) for an ErrorResponse."""
    while True:
        kind, length = struct.unpack(">cI", recv.exactly(5))
        body = recv.exactly(length - 4)
        if kind == b"E":
            return kind, pg.parse_error_fields(body)
        if kind == b"Z":
            return kind, {}


# -- refused at the outer TLS: expired, foreign ------------------------------------


@pytest.fixture(scope="module")
def expired_out(topo: Topology) -> Path:
    out = topo.bot_output("tls-expired", ttl="1s")
    _sleep_past(_expires(out))
    return out


def _foreign_out(topo: Topology) -> Path:
    """Credentials for the right route, signed by another cluster's user CA."""
    foreign = create_authority("user", "elsewhere.local")
    key = generate_private_key()
    ident = Identity(user="bot-example", roles=("example-role",), bot_name="example",
                     route=DatabaseRoute(SERVICE, "postgres", "alice", "example-db"))
    cert = foreign.sign_identity(ident, key.public_key(), dt.timedelta(minutes=5))
    cas = {"host": topo.host_ca.decode(), "user": foreign.cert_pem.decode(),
           "db": foreign.cert_pem.decode()}
    return topo.write_output("tls-foreign", private_key_pem(key), cert_pem(cert), cas)


def _refused_directly(topo: Topology, out: Path, proto: str) -> str:
    """Present `out`'s certificate to the cluster port; return our address as it sees
    it. TLS 1.3: the server checks the certificate after our side finished."""
    with _dial(topo) as raw:
        remote = _remote(raw)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with _context(topo, out, proto).wrap_socket(
                    raw, server_hostname="localhost") as tls:
                tls.sendall(STARTUP if proto == alpn.POSTGRES else b"{}\n")
                if not tls.recv(100):
                    raise ConnectionError("closed")
    return remote


@pytest.mark.parametrize("proto", [alpn.POSTGRES, alpn.AUTH])
def test_an_expired_certificate_sent_straight_to_the_cluster_port_is_audited(
        topo, expired_out, proto):
    mark = _newest(topo, "tls.refused")
    remote = _refused_directly(topo, expired_out, proto)
    events = _events(topo, "tls.refused", remote, mark)
    assert len(events) == 1, events
    assert events[0]["reason"] == "certificate verify failed: certificate has expired"
    assert events[0]["alpn_offered"] == [proto]


@pytest.mark.parametrize("proto", [alpn.POSTGRES, alpn.AUTH])
def test_a_certificate_from_another_clusters_ca_is_audited(topo, proto):
    mark = _newest(topo, "tls.refused")
    remote = _refused_directly(topo, _foreign_out(topo), proto)
    events = _events(topo, "tls.refused", remote, mark)
    assert len(events) == 1, events
    assert str(events[0]["reason"]).startswith("certificate verify failed: "), events


def test_a_foreign_certificate_through_the_local_proxy_is_audited(topo, tunnel):
    before = len(topo.audit("tls.refused"))
    lp = topo.local_proxy(_foreign_out(topo), tunnel=True)
    res = topo.psql(topo.dsn(lp), "select 1")
    assert "the cluster proxy refused the connection" in res.stderr, res.stderr
    assert wait_for(lambda: len(topo.audit("tls.refused")) > before, timeout=5, step=0.2)
    new = topo.audit("tls.refused")[before:]
    assert any(e["alpn_offered"] and "certificate verify failed" in str(e["reason"])
               for e in new), new
    assert topo.psql(topo.dsn(tunnel), "select 1").stdout.strip() == "1"


def test_tunnel_mode_without_a_certificate_is_refused_in_postgres_and_audited(topo):
    mark = _newest(topo, "db.access.denied")
    with _dial(topo) as raw, _context(topo, None, alpn.POSTGRES).wrap_socket(
            raw, server_hostname="localhost") as tls:
        remote = _remote(tls)
        tls.sendall(STARTUP)
        kind, fields = _until_ready_or_error(_Recv(lambda: tls.recv(65536)))
    assert kind == b"E" and "no client certificate was presented" in fields["M"], fields
    denied = _events(topo, "db.access.denied", remote, mark)
    assert denied and "no client certificate" in str(denied[0]["reason"]), denied
    assert not [e for e in topo.audit("tls.refused") if e.get("remote") == remote]


# -- resumption: a ticket must not carry an identity past its certificate ------------


@dataclass
class _Saved:
    """A session is only offered again through the context that made it."""

    tunnel: tuple[ssl.SSLContext, ssl.SSLSession]
    inner: tuple[ssl.SSLContext, ssl.SSLSession]


def _tunnel_session(topo: Topology, ctx: ssl.SSLContext,
                    session: ssl.SSLSession | None = None
                    ) -> tuple[ssl.SSLSession, bool, bytes, dict[str, str], str]:
    """Tunnel mode: the identity is the outer TLS's client certificate."""
    with _dial(topo) as raw, ctx.wrap_socket(raw, server_hostname="localhost",
                                             session=session) as tls:
        tls.sendall(STARTUP)
        kind, fields = _until_ready_or_error(_Recv(lambda: tls.recv(65536)))
        if kind == b"Z":
            tls.sendall(TERMINATE)
        assert tls.session is not None
        return tls.session, bool(tls.session_reused), kind, fields, _remote(tls)


def _inner_session(topo: Topology, ctx: ssl.SSLContext,
                   session: ssl.SSLSession | None = None
                   ) -> tuple[ssl.SSLSession, bool, bytes, dict[str, str], str]:
    """Non-tunnel mode: no outer certificate; the client's own TLS after an SSLRequest
    carries it, pumped here through memory BIOs over the outer TLS."""
    with _dial(topo) as raw, _context(topo, None, alpn.POSTGRES).wrap_socket(
            raw, server_hostname="localhost") as outer:
        outer.sendall(pg.ssl_request())
        assert outer.recv(1) == pg.SSL_YES
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        inner = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost",
                             session=session)

        def pump(call):  # type: ignore[no-untyped-def]
            while True:
                try:
                    result = call()
                except ssl.SSLWantReadError:
                    result = None
                if out_bytes := outgoing.read():
                    outer.sendall(out_bytes)
                if result is not None:
                    return result
                data = outer.recv(65536)
                if not data:
                    return b""
                incoming.write(data)

        def handshake() -> bool:
            inner.do_handshake()
            return True

        pump(handshake)
        pump(lambda: inner.write(STARTUP))
        kind, fields = _until_ready_or_error(_Recv(lambda: pump(lambda: inner.read(65536))))
        if kind == b"Z":
            pump(lambda: inner.write(TERMINATE))
        assert inner.session is not None
        return inner.session, inner.session_reused, kind, fields, _remote(outer)


@pytest.fixture(scope="module")
def saved(topo: Topology) -> _Saved:
    """Sessions (with tickets) saved while a short-lived certificate was valid, returned
    once it has expired. Its 15 s outlive two connects on a loaded machine; then the
    fixture waits for the certificate's own expiry."""
    out = topo.bot_output("tls-resume", ttl="15s")
    kept = []
    for connect, proto in ((_tunnel_session, alpn.POSTGRES), (_inner_session, None)):
        ctx = _context(topo, out, proto)
        session, reused, kind, fields, _ = connect(topo, ctx)
        assert kind == b"Z" and not reused, fields  # signed in: the ticket came with it
        assert session.has_ticket
        kept.append((ctx, session))
    _sleep_past(_expires(out))
    return _Saved(*kept)


@pytest.mark.parametrize("mode", ["tunnel", "non-tunnel"])
def test_a_resumed_session_does_not_outlive_its_certificate(topo, saved, mode):
    connect = _tunnel_session if mode == "tunnel" else _inner_session
    ctx, session = saved.tunnel if mode == "tunnel" else saved.inner
    mark = _newest(topo, "db.access.denied")
    _, reused, kind, fields, remote = connect(topo, ctx, session)
    assert reused  # no new certificate check: the ticket restored the old one
    assert kind == b"E", fields
    assert fields["M"].startswith("access to db denied: the certificate"), fields
    assert " expired at " in fields["M"], fields
    denied = _events(topo, "db.access.denied", remote, mark)
    assert denied and "expired" in str(denied[0]["reason"]), denied
