"""A listening TCP socket on the event loop: each accepted connection is served in its
own task. Shared by the cluster proxy's port and the database agent's link port."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("mwiproxy.relay.listen")

Serve = Callable[[socket.socket, str], Awaitable[None]]
BACKLOG = 1024


class AcceptLoop:
    def __init__(self, host: str, port: int, serve: Serve) -> None:
        self._host, self._port = host, port
        self._serve = serve
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.conns: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        family = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0][0]
        self._sock = socket.create_server((self._host, self._port), family=family,
                                          backlog=BACKLOG)
        self._sock.setblocking(False)
        self._accepting = asyncio.ensure_future(self._accept_loop(self._sock))

    async def close(self, wait: float = 0) -> None:
        """Stop accepting, then cancel the connections' tasks (waiting up to `wait`)."""
        if self._accepting is not None:
            self._accepting.cancel()
            # the loop must forget the socket before its fd is closed and reused
            await asyncio.wait({self._accepting})
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self.conns):
            task.cancel()
        if wait and self.conns:
            await asyncio.wait(self.conns, timeout=wait)

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(lsock)
            except OSError as e:  # EMFILE and friends: keep the port alive
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._serve(sock, f"{peer[0]}:{peer[1]}"))
            self.conns.add(task)
            task.add_done_callback(self.conns.discard)
