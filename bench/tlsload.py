"""Load clients over TLS 1.3 (stdlib ssl, blocking): bulk, ping-pong, new connections."""

from __future__ import annotations

import socket
import ssl
import time

from .load import echo_round_trips, parallel
from .tlspki import SERVER_NAME


def _connect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
             ) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session)


def _send_counted(s: ssl.SSLSocket, nbytes: int) -> None:
    chunk = memoryview(bytes(1 << 20))
    s.sendall(nbytes.to_bytes(8, "big"))
    left = nbytes
    while left > 0:
        n = min(left, len(chunk))
        s.sendall(chunk[:n])
        left -= n
    ack = b""
    while len(ack) < 8:
        part = s.recv(8 - len(ack))
        if not part:
            raise ConnectionError("sink closed early")
        ack += part
    if int.from_bytes(ack, "big") != nbytes:
        raise ConnectionError("sink saw a different byte count")


def bulk(port: int, nbytes: int, ctx: ssl.SSLContext) -> float:
    """Send nbytes of plaintext through one TLS connection to a counted sink; Gbit/s until
    the sink acknowledged every byte."""
    with _connect(port, ctx) as s:
        t0 = time.perf_counter()
        _send_counted(s, nbytes)
        elapsed = time.perf_counter() - t0
    return nbytes * 8 / elapsed / 1e9


def bulk_many(port: int, nbytes: int, conns: int, ctx: ssl.SSLContext) -> float:
    socks = [_connect(port, ctx) for _ in range(conns)]
    try:
        elapsed = parallel(conns, lambda i: _send_counted(socks[i], nbytes // conns))
    finally:
        for s in socks:
            s.close()
    return nbytes // conns * conns * 8 / elapsed / 1e9


def ping_pong(port: int, count: int, ctx: ssl.SSLContext, size: int = 64,
              warmup: int = 200) -> list[float]:
    with _connect(port, ctx) as s:
        return echo_round_trips(s, count, size, warmup)


def new_connections(port: int, count: int, ctx: ssl.SSLContext,
                    resume: bool = False) -> tuple[float, float]:
    """TLS 1.3 handshakes (ECDSA P-256), one 1-byte round trip each. With `resume`, each
    connection offers the session ticket of the one before. (conns/s, share resumed)."""
    session = None
    resumed = 0
    t0 = time.perf_counter()
    for _ in range(count):
        with _connect(port, ctx, session if resume else None) as s:
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo failed")
            resumed += bool(s.session_reused)
            session = s.session  # the ticket came with (before) the echoed byte
    return count / (time.perf_counter() - t0), resumed / count
