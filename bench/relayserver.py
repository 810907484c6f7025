"""mwiproxy's relay as a standalone TCP proxy, for the bench (one process per path).

`python -m bench.relayserver --target PORT [--target PORT ...] [--pure]` listens once per
target and prints the listening ports on one line. With --tls-dir, clients are
TLS-terminated (by the Acceptor: in the engine's worker for the native build) and the relay
runs TLS <-> plain. Every accepted connection is joined to
a new connection to 127.0.0.1:PORT by mwiproxy._native's Acceptor and Relay; the pure build is
selected with MWIPROXY_NO_EXTENSIONS=1 (set by --pure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path
from typing import Any


def _dial_now(target: int) -> int:
    """A nonblocking connect to the target, handed on while it completes: the native relay
    waits for it on its own (no loop round trip, no getaddrinfo in the thread pool)."""
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream.setblocking(False)
    upstream.connect_ex(("127.0.0.1", target))
    return upstream.detach()


async def _dial(loop: asyncio.AbstractEventLoop, target: int) -> socket.socket | None:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream.setblocking(False)
    try:
        await loop.sock_connect(upstream, ("127.0.0.1", target))
    except OSError:
        upstream.close()
        return None
    return upstream


async def _relay_when_connected(loop: asyncio.AbstractEventLoop, conn: Any, target: int) -> None:
    from mwiproxy._native import Relay

    upstream = await _dial(loop, target)
    if upstream is None:
        if isinstance(conn, int):
            os.close(conn)
        else:
            conn.close()
        return
    Relay(loop, conn, upstream.detach()).start()


def listen(loop: asyncio.AbstractEventLoop, srv: socket.socket, target: int,
           tls: Any = None) -> Any:
    """Accept (and TLS-terminate) with mwiproxy's Acceptor; relay each connection on."""
    from mwiproxy._native import NATIVE, Acceptor, Relay

    def on_accept(conn: Any) -> None:
        if NATIVE:
            Relay(loop, conn, _dial_now(target)).start()
        else:
            loop.create_task(_relay_when_connected(loop, conn, target))

    return Acceptor(loop, srv, on_accept, tls)


async def serve(targets: list[int], config: dict[str, int], tls_dir: str | None,
                workers: int = 0) -> None:
    from mwiproxy._native import NATIVE, TLSContext

    tls = None
    if tls_dir:
        d = Path(tls_dir)
        tls = TLSContext(True, (d / "server.crt").read_bytes(), (d / "server.key").read_bytes(),
                         None, "none")

    from mwiproxy._native import engines_for

    engines_for(asyncio.get_running_loop(), workers, **config)  # the pure build: one

    servers = []
    for _ in targets:
        srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
        srv.setblocking(False)
        servers.append(srv)
    ports = [str(s.getsockname()[1]) for s in servers]
    print(*ports, "native" if NATIVE else "pure", flush=True)
    loop = asyncio.get_running_loop()
    acceptors = [listen(loop, s, t, tls) for s, t in zip(servers, targets, strict=True)]
    try:
        await loop.create_future()  # serve until killed
    finally:
        for a in acceptors:
            a.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=int, action="append", required=True)
    parser.add_argument("--pure", action="store_true")
    parser.add_argument("--tls-dir", help="terminate TLS with server.crt/server.key from here")
    parser.add_argument("--engine", action="append", default=[], metavar="KEY=INT",
                        help="native engine setting: use_splice, pipe_size, buf_size, pool_max")
    parser.add_argument("--workers", type=int, default=0,
                        help="relay workers (native build; 0, the default: one per core)")
    args = parser.parse_args()
    if args.pure:
        os.environ["MWIPROXY_NO_EXTENSIONS"] = "1"
    config = {k: int(v) for k, v in (item.split("=", 1) for item in args.engine)}
    import uvloop

    uvloop.run(serve(args.target, config, args.tls_dir, args.workers))


if __name__ == "__main__":
    main()
