"""`teleport-postgres-ping` end to end: a client that frames its writes talks to the real
database through the cluster, and an idle session receives keepalive frames."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from mwiproxy.wire import alpn, ping
from mwiproxy.wire import postgres as pg

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


def test_a_framed_session_works_and_gets_keepalives_when_idle(topo, alice_out):
    client = FramedClient(topo.cluster.addr, alice_out)
    assert client.protocol == "teleport-postgres-ping"
    client.send(pg.build_startup({"user": "alice", "database": "example-db"}))
    assert client.until_ready().endswith(b"Z\x00\x00\x00\x05I")
    before = client.deframer.keepalives
    assert client.idle(2.5) == b""  # nothing but keepalives (ping_interval: 1s)
    assert client.deframer.keepalives - before >= 2
    client.send(_query("select 41 + 1"))
    assert b"\x00\x00\x00\x0242" in client.until_ready()  # the DataRow's value
    client.sock.close()
