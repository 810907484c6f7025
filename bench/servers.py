"""Back-end servers for the bench, run in their own process: a sink and an echo server.

`python -m bench.servers [--tls-dir DIR]` prints "<sink> <echo> <counted sink>" ports (and,
with --tls-dir, "<TLS counted sink> <TLS echo>") and serves until killed. The counted sink
reads an 8-byte length first, so TLS clients need no half-close to end a bulk run.
Sinks are threads (simple, and they cost the same on every path); the plain echo is a
uvloop protocol on its own thread so it can hold the ~10,000 idle connections of the
concurrency figure without a thread each.
"""

from __future__ import annotations

import argparse
import asyncio
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


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _serve_echo_loop() -> int:
    """The plain echo: uvloop in a thread of its own."""
    import uvloop

    srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
    srv.setblocking(False)

    def run() -> None:
        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(_EchoProtocol, sock=srv)
            await server.serve_forever()

        uvloop.run(main())

    threading.Thread(target=run, daemon=True).start()
    return int(srv.getsockname()[1])


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
    ports = [_serve(_sink), _serve_echo_loop(), _serve(_counted_sink)]
    if args.tls_dir:
        from .tlspki import BenchPki

        tls = BenchPki(Path(args.tls_dir)).server_context()
        ports += [_serve(_counted_sink, tls), _serve(_echo, tls)]
    print(*ports, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
