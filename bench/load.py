"""Load clients over plain TCP: bulk throughput (1 and N connections), 64-byte ping-pong
round trips, and new connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


def _send_bulk(s: socket.socket, nbytes: int) -> None:
    chunk = memoryview(bytes(1 << 20))
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
    if int.from_bytes(ack, "big") != nbytes:
        raise ConnectionError("sink saw a different byte count")


def bulk(port: int, nbytes: int) -> float:
    """Send nbytes through one connection; Gbit/s until the sink acknowledged every byte."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        _send_bulk(s, nbytes)
        elapsed = time.perf_counter() - t0
    return nbytes * 8 / elapsed / 1e9


def parallel(n: int, job: Callable[[int], None]) -> float:
    """Run job(i) on n threads at once; seconds from the common start to the last end."""
    errors: list[BaseException] = []
    start = threading.Barrier(n + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            job(i)
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def bulk_many(port: int, nbytes: int, conns: int) -> float:
    """nbytes in total over `conns` connections at once; aggregate Gbit/s."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    try:
        elapsed = parallel(conns, lambda i: _send_bulk(socks[i], nbytes // conns))
    finally:
        for s in socks:
            s.close()
    return nbytes // conns * conns * 8 / elapsed / 1e9


def ping_pong(port: int, count: int, size: int = 64, warmup: int = 200) -> list[float]:
    """Round-trip times in microseconds of `count` size-byte messages on one connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return echo_round_trips(s, count, size, warmup)


def echo_round_trips(s: socket.socket, count: int, size: int, warmup: int) -> list[float]:
    """Send size-byte messages to an echo peer one at a time; round trips in µs
    (after `warmup` unmeasured ones). Shared by the plain and TLS clients."""
    msg = b"x" * size
    out = []
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


def new_connections(port: int, count: int) -> float:
    """Sequential connections, one 1-byte round trip each; connections per second."""
    t0 = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo failed")
    return count / (time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
