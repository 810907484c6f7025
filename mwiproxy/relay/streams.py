"""Byte streams for the setup phase (handshakes, startup, authorization) — and what the
relay (`pipe.py`) takes over once the setup is done.

A native `_native.TLSStream` (TLS on a socket, or TLS inside one: `wrap_inner`, the
client's own TLS in non-tunnel mode, which may travel in `-ping` frames:
`wrap_inner(framing=)`), `SocketStream` (a plain socket) and a `FramedStream` (the
`-ping` framing) over either are all handed to the native relay, which frames and sends
the keepalives itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol

from mwiproxy import _native
from mwiproxy.wire import ping

READ_SIZE = 64 * 1024  # TLS records are at most 16 KiB: bigger reads only cost zeroing


class ByteStream(Protocol):
    async def read(self, max_bytes: int = ...) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class SocketStream:
    """A connected plain socket (owned from here on), driven by the loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        set_nodelay(sock)
        self.sock: socket.socket | None = sock

    def _live(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionResetError("the socket was handed over or closed")
        return self.sock

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self._live(), max_bytes)

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self._live(), data)

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self._live().shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def detach(self) -> int:
        """The fd, for a relay that owns it from here on."""
        fd = self._live().detach()
        self.sock = None
        return fd


def set_nodelay(sock: socket.socket) -> None:
    """Nagle off: every message here is a request or an answer someone waits for (asyncio
    transports do this themselves; raw sockets handed around here must do it)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FramedStream:
    """The `-ping` framing over another stream, for the setup phase: reads are deframed
    (keepalives dropped), each write is one frame. The relay takes it over where its
    deframer stopped (`framing`) and sends the keepalives from then on."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self._deframer = ping.Deframer()

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        while data := await self.inner.read(max_bytes):
            if payload := self._deframer.feed(data):
                return payload
        if self._deframer.mid_frame:
            raise ConnectionResetError("the framed stream ended inside a frame")
        return b""

    async def write(self, data: bytes) -> None:
        await self.inner.write(ping.frame(data))

    def close(self) -> None:
        self.inner.close()

    def framing(self, keepalive: float | None) -> _native.Framing:
        """The framing for a relay (or an inner TLS: `TLSStream.wrap_inner`) taking
        `inner` over: where the deframer stopped, so no byte is lost or doubled."""
        return _native.Framing(keepalive, self._deframer.header, self._deframer.payload_left)


class BufferedReader:
    """`readexactly` over a ByteStream for the setup phase's message parsing. Bytes read
    past the last message are handed on with `leftover()`, never lost."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = await self.stream.read(READ_SIZE)
            if not data:
                partial = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_some(self) -> bytes:
        """What is buffered, or else the next chunk (b"" at the end)."""
        if self._buf:
            return self.leftover()
        return await self.stream.read(READ_SIZE)

    def leftover(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


async def dial_tcp(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (Nagle off), without blocking the loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            error = e
            continue
        except BaseException:
            sock.close()
            raise
        set_nodelay(sock)
        return sock
    raise error

