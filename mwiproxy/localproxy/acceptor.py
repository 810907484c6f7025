"""The local proxy's listening socket: a connection cap that queues, and a drain.

With a cap of N, the Nth open connection stops the accept loop: further callers wait in
the kernel's accept queue (the listen backlog) and are accepted as earlier sessions end
— they are never reset. `drain(timeout)` stops accepting, lets in-flight sessions
finish for at most `timeout` seconds, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("mwiproxy.localproxy")

BACKLOG = 4096
UNIX_PREFIX = "unix://"
# gets the accepted socket and owns it from then on
SocketHandler = Callable[[socket.socket], Awaitable[None]]


@dataclass(frozen=True)
class ListenAddr:
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str = ""

    @classmethod
    def parse(cls, text: str) -> ListenAddr:
        if text.startswith(UNIX_PREFIX):
            path = text[len(UNIX_PREFIX):]
            if not path.startswith("/"):
                raise ValueError(f"{text!r}: a unix socket path must be absolute")
            return cls(unix_path=path)
        host, sep, port = text.removeprefix("tcp://").rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{text!r} is not host:port, tcp://host:port or unix:///path")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))


def _listen_unix(path: str) -> socket.socket:
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    return sock


def _listen(addr: ListenAddr) -> socket.socket:
    if addr.unix_path:
        sock = _listen_unix(addr.unix_path)
    else:
        family = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((addr.host, addr.port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


class Acceptor:
    def __init__(self, addr: ListenAddr, handler: SocketHandler, max_connections: int = 0
                 ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be 0 (no cap) or more")
        self.addr = addr
        self._handler = handler
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._conns)

    @property
    def accepting(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    def sockname(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._sock = _listen(self.addr)
        self._accepting = asyncio.ensure_future(self._accept_loop(self._sock))

    async def wait(self) -> None:
        """Until the accept loop stops (drain, close, or cancellation)."""
        if self._accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._accepting)

    async def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            # the loop must forget the socket before its fd is closed and reused
            await asyncio.wait({self._accepting})
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self.addr.unix_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.addr.unix_path)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting; wait up to `timeout` s for open sessions; cut what is left.
        True when every session ended on its own."""
        await self.stop_accepting()
        pending = set(self._conns)
        if pending:
            log.info("draining: waiting up to %.0fs for %d open connection(s)", timeout,
                     len(pending))
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain timeout: cut %d connection(s) still open", len(pending))
            await asyncio.wait(pending)
        return not pending

    async def close(self) -> None:
        await self.drain(0)

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._slots is not None:
                await self._slots.acquire()  # at the cap: callers queue in the backlog
            try:
                sock, _ = await loop.sock_accept(lsock)
            except OSError as e:  # EMFILE and friends: keep the port alive
                self._release()
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._serve(sock))
            self._conns.add(task)
            task.add_done_callback(self._done)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._handler(sock)
        finally:
            if sock.fileno() >= 0:  # not handed on (detached) and not closed
                sock.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._conns.discard(task)
        self._release()
        if not task.cancelled() and task.exception() is not None:
            log.error("local proxy connection failed", exc_info=task.exception())

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()
