"""Helpers for the relay tests: real socket pairs, and running a test body on uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from mwiproxy.wire.postgres import ADMIN_SHUTDOWN, error_response

# what the cluster proxy says when it cuts a session (Relay.close(farewell_a=...))
FAREWELL = error_response("access to db denied: bot 'ci' is locked: incident 42", ADMIN_SHUTDOWN)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
    return client, server


def pair(kind: str) -> tuple[socket.socket, socket.socket]:
    return tcp_pair() if kind == "tcp" else socket.socketpair()


class Joined:
    """Client A <-> relay <-> client B: `a` and `b` are the outer ends the test drives."""

    def __init__(self, relay_cls: Any, loop: asyncio.AbstractEventLoop, kind: str = "tcp",
                 **kw: Any) -> None:
        self.a, inner_a = pair(kind)
        inner_b, self.b = pair(kind)
        for s in (self.a, self.b):
            s.setblocking(False)
        self.done: asyncio.Future[str] = loop.create_future()
        self.relay = relay_cls(loop, inner_a.detach(), inner_b.detach(),
                               on_done=self._on_done, **kw)
        self.calls = 0

    def _on_done(self, reason: str) -> None:
        self.calls += 1
        if not self.done.done():
            self.done.set_result(reason)

    def close(self) -> None:
        self.a.close()
        self.b.close()


async def recv_all(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                   limit: int | None = None) -> bytes:
    out = bytearray()
    while limit is None or len(out) < limit:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def run(body: Callable[[], Awaitable[Any]], timeout: float = 60, loop: str = "uvloop") -> Any:
    """Run a test body on uvloop (the production loop) or the stdlib asyncio loop."""
    async def guarded() -> Any:
        return await asyncio.wait_for(body(), timeout)

    if loop == "uvloop":
        return uvloop.run(guarded())
    return asyncio.run(guarded())


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def farewell_split(got: bytes, stream: bytes, farewell: bytes = FAREWELL) -> tuple[int, int]:
    """(k, m) with got == stream[:k] + farewell[:m]: a prefix of the relayed stream, then
    the start of the farewell, never one inside the other. AssertionError if no such split."""
    lo, hi = 0, min(len(got), len(stream))
    while lo < hi:  # the longest common prefix of got and stream
        mid = (lo + hi + 1) // 2
        if got[:mid] == stream[:mid]:
            lo = mid
        else:
            hi = mid - 1
    for k in range(lo, max(-1, lo - len(farewell) - 1), -1):
        if got[k:] == farewell[:len(got) - k]:
            return k, len(got) - k
    raise AssertionError(f"{len(got)} bytes are not a prefix of the stream and then the farewell")


async def flood(sock: socket.socket, chunk: bytes, limit: int = 2000) -> bytes:
    """Send `chunk` until the kernel takes no more (the relay stopped reading): the bytes
    it took."""
    sent = bytearray()
    for _ in range(limit):
        try:
            sent += chunk[:sock.send(chunk)]
        except BlockingIOError:
            await asyncio.sleep(0.05)
            try:
                sent += chunk[:sock.send(chunk)]
            except BlockingIOError:
                break
    return bytes(sent)
