"""Load clients over TLS 1.3 (stdlib ssl, blocking): bulk, ping-pong, new connections."""

from __future__ import annotations

import socket
import ssl
import time

from .tlspki import SERVER_NAME


def _connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname=SERVER_NAME)


def bulk(port: int, nbytes: int, ctx: ssl.SSLContext) -> float:
    """Send nbytes of plaintext through one TLS connection to a counted sink; Gbit/s until
    the sink acknowledged every byte."""
    chunk = memoryview(bytes(1 << 20))
    with _connect(port, ctx) as s:
        t0 = time.perf_counter()
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
        elapsed = time.perf_counter() - t0
    if int.from_bytes(ack, "big") != nbytes:
        raise ConnectionError("sink saw a different byte count")
    return nbytes * 8 / elapsed / 1e9


def ping_pong(port: int, count: int, ctx: ssl.SSLContext, size: int = 64,
              warmup: int = 200) -> list[float]:
    msg = b"x" * size
    out = []
    with _connect(port, ctx) as s:
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < size:
                part = s.recv(size - got)
                if not part:
                    raise ConnectionError("echo closed early")
                got += len(part)
            if i >= warmup:
                out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def new_connections(port: int, count: int, ctx: ssl.SSLContext) -> float:
    """Full TLS 1.3 handshakes (ECDSA P-256), one 1-byte round trip each; conns/s."""
    t0 = time.perf_counter()
    for _ in range(count):
        with _connect(port, ctx) as s:
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo failed")
    return count / (time.perf_counter() - t0)
