"""Back-end servers for the bench, run in their own process: a sink and an echo server.

`python -m bench.servers [--tls-dir DIR]` prints "<sink> <echo> <counted sink>" ports (and,
with --tls-dir, "<TLS counted sink> <TLS echo>") and serves until killed. The counted sink
reads an 8-byte length first, so TLS clients need no half-close to end a bulk run.
Threads, not asyncio: the back end should cost the same on every path and stay simple.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path


def _sink(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    total = 0
    with conn:
        while n := conn.recv_into(buf):
            total += n
        conn.sendall(total.to_bytes(8, "big"))  # acknowledges every byte arrived


def _counted_sink(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    with conn:
        head = b""
        while len(head) < 8:
            part = conn.recv(8 - len(head))
            if not part:
                return
            head += part
        left = total = int.from_bytes(head, "big")
        while left > 0 and (n := conn.recv_into(buf, min(left, len(buf)))):
            left -= n
        conn.sendall((total - left).to_bytes(8, "big"))


def _echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve(handler: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> int:
    srv = socket.create_server(("127.0.0.1", 0), backlog=1024)

    def handle(conn: socket.socket) -> None:
        if tls is not None:
            try:
                conn = tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        handler(conn)

    def accept_loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return int(srv.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls-dir")
    args = parser.parse_args()
    ports = [_serve(_sink), _serve(_echo), _serve(_counted_sink)]
    if args.tls_dir:
        from .tlspki import BenchPki

        tls = BenchPki(Path(args.tls_dir)).server_context()
        ports += [_serve(_counted_sink, tls), _serve(_echo, tls)]
    print(*ports, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
