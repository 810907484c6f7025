"""Load clients: single-connection bulk throughput and 64-byte ping-pong round trips."""

from __future__ import annotations

import socket
import time


def bulk(port: int, nbytes: int) -> float:
    """Send nbytes through one connection; Gbit/s until the sink acknowledged every byte."""
    chunk = memoryview(bytes(1 << 20))
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            left -= s.send(chunk[: min(left, len(chunk))])
        s.shutdown(socket.SHUT_WR)
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


def ping_pong(port: int, count: int, size: int = 64, warmup: int = 200) -> list[float]:
    """Round-trip times in microseconds of `count` size-byte messages on one connection."""
    msg = b"x" * size
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
