"""Byte streams for the setup phase (handshakes, startup, authorization) — and what the
relay (`pipe.py`) takes over once the setup is done.

A native `_native.TLSStream` (TLS on a socket, or TLS inside one: `wrap_inner`, the
client's own TLS in non-tunnel mode) and `SocketStream` (a plain socket) can be handed to
the native relay. `FramedStream` (the `-ping` framing) and `MemoryTLSStream` (TLS carried
inside any other stream: the client's own TLS inside `-ping` framing) cannot, so a pipe
with one of them copies in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Protocol

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
    """The `-ping` framing over another stream: reads are deframed (keepalives dropped),
    each write is one frame. Writes are serialized so a keepalive never lands inside one."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self._deframer = ping.Deframer()
        self._writing = asyncio.Lock()
        self.last_write = asyncio.get_running_loop().time()

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        while data := await self.inner.read(max_bytes):
            if payload := self._deframer.feed(data):
                return payload
        if self._deframer.mid_frame:
            raise ConnectionResetError("the framed stream ended inside a frame")
        return b""

    async def write(self, data: bytes) -> None:
        await self._send(ping.frame(data))

    async def keepalive(self) -> None:
        await self._send(ping.KEEPALIVE)

    async def _send(self, raw: bytes) -> None:
        async with self._writing:
            self.last_write = asyncio.get_running_loop().time()
            await self.inner.write(raw)

    def close(self) -> None:
        self.inner.close()


class MemoryTLSStream:
    """TLS carried inside another stream (stdlib SSLObject over memory BIOs); inside a
    native TLS stream, `_native.TLSStream.wrap_inner` does the same without Python."""

    def __init__(self, inner: ByteStream, ctx: ssl.SSLContext, *, server_side: bool,
                 initial: bytes = b"") -> None:
        self.inner = inner
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self._writing = asyncio.Lock()
        if initial:
            self._in.write(initial)

    async def _flush(self) -> None:
        async with self._writing:
            if self._out.pending:
                await self.inner.write(self._out.read())

    async def _fill(self) -> None:
        data = await self.inner.read(READ_SIZE)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def handshake(self) -> None:
        """Raises ssl.SSLError (after sending the alert) when the handshake fails."""
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    await self._flush()  # the alert tells the client why
                raise
            await self._flush()
            return

    def peer_cert_der(self) -> bytes | None:
        return self._obj.getpeercert(binary_form=True)

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            try:
                return self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def write(self, data: bytes) -> None:
        self._obj.write(data)
        await self._flush()

    def close(self) -> None:
        self.inner.close()


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

