"""Pure-Python twin of the native Acceptor (_accept.pxi): the loop accepts and drives the
handshakes itself (a task per TLS connection). Same API, same counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

from .relaytypes import AcceptorStats, timeout_ms
from .tls_py import TLSContext, TLSStream

_ACCEPT_BATCH = 64
_PAUSE = 0.1  # after EMFILE and friends: let fds free up


class Acceptor:
    """Accepts connections on a listening socket (which stays the caller's) and calls
    on_accept(conn) once per connection: conn is the accepted fd, or with a server
    `context` a handshaken TLSStream on it. Either way the callback owns it. Connections
    whose handshake fails or outlasts `handshake_timeout` are closed and only counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | int,
                 on_accept: Callable[[Any], object], context: TLSContext | None = None,
                 handshake_timeout: float | None = 10.0) -> None:
        fd = sock.fileno() if isinstance(sock, socket.socket) else sock
        if not isinstance(fd, int):
            raise TypeError(f"a listening socket or its fd is needed, not {type(sock).__name__}")
        if context is not None and not context.server_side:
            raise ValueError("an acceptor needs a server-side TLS context")
        self._timeout = timeout_ms(handshake_timeout) / 1000 or 10.0
        dup = os.dup(fd)
        try:
            listening = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            raise
        if not listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            listening.close()
            raise OSError(22, "not a listening socket")
        listening.setblocking(False)
        self._sock: socket.socket | None = listening
        self._loop = loop
        self._on_accept = on_accept
        self._context = context
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = dict.fromkeys(AcceptorStats._fields, 0)
        loop.add_reader(listening.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def stats(self) -> AcceptorStats:
        return AcceptorStats(**{**self._counts, "handshaking": len(self._tasks)})

    def close(self) -> None:
        """Stop accepting (the listening socket itself stays open)."""
        if self._sock is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        for task in self._tasks:
            task.cancel()

    def _readable(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._sock is None:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                self._counts["accept_errors"] += 1
                self._pause()
                return
            self._counts["accepted"] += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is None:
                self._hand(conn.detach())
            else:
                stream = TLSStream(self._loop, self._context, conn.detach())
                task = self._loop.create_task(self._handshake(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _pause(self) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)

        def resume() -> None:
            if self._sock is not None:
                self._loop.add_reader(fd, self._readable)

        self._loop.call_later(_PAUSE, resume)

    async def _handshake(self, stream: TLSStream) -> None:
        try:
            await asyncio.wait_for(stream.handshake(), self._timeout)
        except TimeoutError:
            self._counts["handshake_timeouts"] += 1
            stream.close()
            return
        except asyncio.CancelledError:
            stream.close()
            self._counts["handshake_failed"] += 1
            raise
        except OSError:  # TLSError is a ConnectionError
            self._counts["handshake_failed"] += 1
            stream.close()
            return
        self._hand(stream)

    def _hand(self, conn: int | TLSStream) -> None:
        self._counts["handed"] += 1
        try:
            self._on_accept(conn)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._loop.call_exception_handler(
                    {"message": "acceptor on_accept callback failed", "exception": exc})
