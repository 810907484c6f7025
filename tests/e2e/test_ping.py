"""`teleport-postgres-ping` end to end: a client that frames its writes talks to the real
database through the cluster, and an idle session receives keepalive frames; in tunnel
mode and in non-tunnel mode (the client's own TLS travelling in the frames)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from mwiproxy.wire import alpn, ping
from mwiproxy.wire import postgres as pg
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.integration


class FramedClient:
    def __init__(self, addr: str, out: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(out / "teleport-host-ca.crt"))
        ctx.load_cert_chain(str(out / "tlscert"), str(out / "key"))
        ctx.set_alpn_protocols([alpn.with_ping(alpn.POSTGRES)])
        host, port = addr.split(":")
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.deframer = ping.Deframer()
        self.buffer = b""

    @property
    def protocol(self) -> str | None:
        return self.sock.selected_alpn_protocol()

    def send(self, data: bytes) -> None:
        self.sock.sendall(ping.frame(data))

    def until_ready(self) -> bytes:
        """Payload bytes up to and including the next ReadyForQuery."""
        while (end := _ready_end(self.buffer)) < 0:
            data = self.sock.recv(65536)
            assert data, f"closed; got {self.buffer!r}"
            self.buffer += self.deframer.feed(data)
        got, self.buffer = self.buffer[:end], self.buffer[end:]
        return got

    def idle(self, seconds: float) -> bytes:
        """Whatever payload arrives while the client says nothing (keepalives counted)."""
        payload, deadline = b"", time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                payload += self.deframer.feed(self.sock.recv(65536))
            except TimeoutError:
                break
        self.sock.settimeout(10)
        return payload


class NonTunnelFramedClient(FramedClient):
    """Non-tunnel `-ping`: the outer TLS carries no certificate; after an SSLRequest the
    client's own TLS (with its certificate) runs inside the frames."""

    def __init__(self, addr: str, out: Path) -> None:
        outer = ssl.create_default_context(cafile=str(out / "teleport-host-ca.crt"))
        outer.set_alpn_protocols([alpn.with_ping(alpn.POSTGRES)])
        host, port = addr.split(":")
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = outer.wrap_socket(raw, server_hostname="localhost")
        self.deframer = ping.Deframer()
        self.buffer = b""
        self.sock.sendall(ping.frame(pg.ssl_request()))
        assert self._recv_payload() == pg.SSL_YES
        inner = ssl.create_default_context(cafile=str(out / "teleport-host-ca.crt"))
        inner.load_cert_chain(str(out / "tlscert"), str(out / "key"))
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = inner.wrap_bio(self._in, self._out, server_hostname="localhost")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._in.write(self._recv_payload())
        self._flush()

    def _recv_payload(self) -> bytes:
        """The next deframed bytes (keepalives counted, skipped)."""
        while not (payload := self.deframer.feed(self.sock.recv(65536))):
            pass
        return payload

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(ping.frame(self._out.read()))

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def until_ready(self) -> bytes:
        while (end := _ready_end(self.buffer)) < 0:
            try:
                self.buffer += self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._in.write(self._recv_payload())
        got, self.buffer = self.buffer[:end], self.buffer[end:]
        return got

    def idle(self, seconds: float) -> bytes:
        """The inner plaintext arriving while the client says nothing (keepalives, on the
        outer stream between records, counted)."""
        self._in.write(super().idle(seconds))
        try:
            return self.obj.read(65536)
        except ssl.SSLWantReadError:
            return b""


def _ready_end(data: bytes) -> int:
    """End offset of the first complete ReadyForQuery message, or -1."""
    pos = 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        if pos + 1 + length > len(data):
            return -1
        if data[pos:pos + 1] == b"Z":
            return pos + 1 + length
        pos += 1 + length
    return -1


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


@pytest.mark.parametrize("client_kind", [FramedClient, NonTunnelFramedClient],
                         ids=["tunnel", "non-tunnel"])
def test_a_framed_session_is_relayed_natively_with_keepalives_when_idle(topo, alice_out,
                                                                      client_kind):
    """Tunnel: the framed stream carries PostgreSQL itself. Non-tunnel: the client's own
    TLS inside `-ping` frames inside the outer TLS; the cluster takes the identity from
    the inner certificate, then the relay runs the inner TLS over the framing. Either
    way the relay sends keepalives while the session is idle (no Python copy)."""
    seen = len(topo.audit("db.session.end"))
    client = client_kind(topo.cluster.addr, alice_out)
    assert client.protocol == "teleport-postgres-ping"
    client.send(pg.build_startup({"user": "alice", "database": "example-db"}))
    assert client.until_ready().endswith(b"Z\x00\x00\x00\x05I")
    before = client.deframer.keepalives
    assert client.idle(2.5) == b""  # nothing but keepalives (ping_interval: 1s)
    assert client.deframer.keepalives - before >= 2
    client.send(_query("select 41 + 1"))
    assert b"\x00\x00\x00\x0242" in client.until_ready()  # the DataRow's value
    client.sock.close()
    assert wait_for(lambda: len(topo.audit("db.session.end")) > seen)
    ended = topo.audit("db.session.end")[seen:]
    assert [(e["native"], e["db_user"]) for e in ended] == [(True, "alice")]


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel", "non-tunnel"])
def test_the_local_proxy_with_ping_relays_framed_sessions(topo, alice_out, tunnel):
    """`mwibot proxy … --ping` (the default), with and without --tunnel (psql's own TLS
    in frames): framed at both proxies, relayed by the relay."""
    framed = topo.local_proxy(alice_out, tunnel=tunnel, extra=("--ping",))
    try:
        seen = len(topo.audit("db.session.end"))
        dsn = topo.dsn(framed) if tunnel else topo.dsn(framed, alice_out)
        res = topo.psql(dsn, "select sum(g) from generate_series(1, 100000) g")
        assert res.stdout.strip() == "5000050000", res.stderr
        assert wait_for(lambda: len(topo.audit("db.session.end")) > seen)
        ended = topo.audit("db.session.end")[seen:]
        assert [e["native"] for e in ended] == [True]
        assert ended[0]["bytes_db_to_client"] > 0
    finally:
        framed.stop()
