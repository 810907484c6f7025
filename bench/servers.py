"""Back-end servers for the bench, run in their own process: a sink and an echo server.

`python -m bench.servers` prints "<sink port> <echo port>" and serves until killed.
Threads, not asyncio: the back end should cost the same on every path and stay simple.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def _sink(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    total = 0
    with conn:
        while n := conn.recv_into(buf):
            total += n
        conn.sendall(total.to_bytes(8, "big"))  # acknowledges every byte arrived


def _echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve(handler: Callable[[socket.socket], None]) -> int:
    srv = socket.create_server(("127.0.0.1", 0), backlog=1024)

    def accept_loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return int(srv.getsockname()[1])


def main() -> None:
    print(_serve(_sink), _serve(_echo), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
