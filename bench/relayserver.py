"""mwiproxy's relay as a standalone TCP proxy, for the bench (one process per path).

`python -m bench.relayserver --target PORT [--target PORT ...] [--pure]` listens once per
target and prints the listening ports on one line. Every accepted connection is joined to
a new connection to 127.0.0.1:PORT by mwiproxy._native's Relay; the pure build is
selected with MWIPROXY_NO_EXTENSIONS=1 (set by --pure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket


async def accept_loop(srv: socket.socket, target: int) -> None:
    from mwiproxy._native import Relay

    loop = asyncio.get_running_loop()
    while True:
        client, _ = await loop.sock_accept(srv)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            await loop.sock_connect(upstream, ("127.0.0.1", target))
        except OSError:
            client.close()
            upstream.close()
            continue
        Relay(loop, client.detach(), upstream.detach()).start()


async def serve(targets: list[int], config: dict[str, int]) -> None:
    from mwiproxy._native import NATIVE

    if NATIVE and config:
        from mwiproxy._native import _relay

        _relay.engine_for(asyncio.get_running_loop(), **config)  # type: ignore[arg-type]

    servers = []
    for _ in targets:
        srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
        srv.setblocking(False)
        servers.append(srv)
    ports = [str(s.getsockname()[1]) for s in servers]
    print(*ports, "native" if NATIVE else "pure", flush=True)
    await asyncio.gather(*(accept_loop(s, t) for s, t in zip(servers, targets, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=int, action="append", required=True)
    parser.add_argument("--pure", action="store_true")
    parser.add_argument("--engine", action="append", default=[], metavar="KEY=INT",
                        help="native engine setting: use_splice, pipe_size, buf_size, pool_max")
    args = parser.parse_args()
    if args.pure:
        os.environ["MWIPROXY_NO_EXTENSIONS"] = "1"
    config = {k: int(v) for k, v in (item.split("=", 1) for item in args.engine)}
    import uvloop

    uvloop.run(serve(args.target, config))


if __name__ == "__main__":
    main()
