"""The steady-state relay between two set-up streams: the one place that decides how
bytes are copied.

Both ends native-relayable (a plain `SocketStream` or a handshaken `_native.TLSStream`,
which may be TLS inside TLS: `TLSStream.wrap_inner`) → both leave Python and
`_native.Relay` joins them: TLS records are read, decrypted, encrypted and written on the
native worker, nothing runs per chunk in Python. This is the path of tunnel mode at both
proxies and of non-tunnel mode at both (the client's own TLS inside the local proxy's).

Otherwise — an end framed with `-ping` (`FramedStream`, or `MemoryTLSStream`: the
client's own TLS inside that framing) — a Python copy: one task per direction, backpressure by awaiting each write, EOF passed on
(half-close on plain sockets, close otherwise), an optional idle timeout, keepalive
frames toward framed ends that had nothing written for `keepalive` seconds.

Bytes read past the end of the setup phase are not lost: callers write them to the
other end before `run()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.relay.streams import READ_SIZE, ByteStream, FramedStream, SocketStream

CLOSE_TIMEOUT = 5.0
_RESETS = (ConnectionError, ssl.SSLError, OSError)


@dataclass
class PipeStats:
    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    reason: str = ""
    native: bool = False


def _native_capable(stream: ByteStream) -> bool:
    """Can the native relay take `stream` over (TLS on a socket, TLS inside such TLS, or a
    plain socket)?"""
    if isinstance(stream, SocketStream):
        return stream.sock is not None
    return isinstance(stream, _native.TLSStream)


class Pipe:
    """Relays a ↔ b until both directions end, either side fails, or close() is called."""

    def __init__(self, a: ByteStream, b: ByteStream, *, idle_timeout: float | None = None,
                 close_timeout: float = CLOSE_TIMEOUT, allow_native: bool = True,
                 keepalive: float | None = None) -> None:
        self._a, self._b = a, b
        self._idle = idle_timeout
        self._close_timeout = close_timeout
        self._allow_native = allow_native
        self._keepalive = keepalive
        self.stats = PipeStats()
        self._relay: _native.Relay | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._farewell = b""
        self._last = 0.0

    def close(self, reason: str = _native.REASON_CLOSED, farewell_to_a: bytes = b"") -> None:
        """Cut both sides now (a lock, an expired certificate, shutdown), telling side a
        why first if `farewell_to_a` is given (the first farewell wins). The native relay
        stops reading both sides, delivers to a what it already read from b, then the
        farewell, then closes (bounded by the close timeout), so a gets a prefix of b's
        stream and then the whole farewell. The relay knows no framing: between queries
        that prefix ends on a message boundary; cut while a result streams, it may not,
        and the client then reads a broken message instead. The Python copy writes the
        farewell after its tasks stopped, bounded by one second."""
        if not self.stats.reason:
            self.stats.reason = reason
        self._farewell = self._farewell or farewell_to_a
        if self._relay is not None:
            self._relay.close(self._farewell)
        else:
            self._abort()

    def _abort(self) -> None:
        """Stop the copy; run() closes both ends once its tasks are done."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()

    async def run(self) -> PipeStats:
        if self._allow_native and _native_capable(self._a) and _native_capable(self._b):
            return await self._run_native()
        return await self._run_copy()

    # -- native ------------------------------------------------------------------------

    def _take(self, stream: ByteStream) -> int | _native.TLSStream:
        if isinstance(stream, SocketStream):
            return stream.detach()
        assert isinstance(stream, _native.TLSStream)
        return stream

    async def _run_native(self) -> PipeStats:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        self._relay = _native.Relay(
            loop, self._take(self._a), self._take(self._b), lambda r: _settle(done, r),
            idle_timeout=self._idle, close_timeout=self._close_timeout)
        self._relay.start()
        self.stats.native = True
        if self._stopping or self.stats.reason:  # closed while being set up
            self._relay.close(self._farewell)
        try:
            reason = await done
        except asyncio.CancelledError:  # the owner is going away: so does the relay
            self._relay.close(self._farewell)
            raise
        counters = self._relay.stats()
        self.stats.bytes_a_to_b = counters.bytes_a_to_b
        self.stats.bytes_b_to_a = counters.bytes_b_to_a
        self.stats.reason = self.stats.reason or reason
        return self.stats

    # -- Python copy -------------------------------------------------------------------

    async def _run_copy(self) -> PipeStats:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        copies = {asyncio.ensure_future(self._copy(self._a, self._b, True)),
                  asyncio.ensure_future(self._copy(self._b, self._a, False))}
        helpers = {asyncio.ensure_future(h) for h in self._helpers()}
        self._tasks = copies | helpers
        try:
            if self._stopping:  # closed while being set up
                self._abort()
            _, pending = await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=self._close_timeout)
            if pending:
                self.close(_native.REASON_CLOSE_TIMEOUT)
        finally:
            self._abort()
            await asyncio.wait(self._tasks)  # nothing may wait on an fd that is closed
            await self._say_farewell()
            self._a.close()
            self._b.close()
        self.stats.reason = self.stats.reason or _native.REASON_EOF
        return self.stats

    async def _say_farewell(self) -> None:
        if self._farewell:
            with contextlib.suppress(*_RESETS, TimeoutError):
                await asyncio.wait_for(self._a.write(self._farewell), 1.0)

    def _helpers(self) -> list[Coroutine[None, None, None]]:
        helpers: list[Coroutine[None, None, None]] = []
        if self._idle:
            helpers.append(self._watch_idle())
        framed = [f for f in map(_framed_layer, (self._a, self._b)) if f is not None]
        if self._keepalive and framed:
            helpers.append(self._send_keepalives(framed))
        return helpers

    async def _copy(self, src: ByteStream, dst: ByteStream, a_to_b: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await src.read(READ_SIZE):
                await dst.write(data)
                self._count(a_to_b, len(data))
                self._last = loop.time()
        except asyncio.CancelledError:
            raise
        except _RESETS:
            if not self.stats.reason and not self._stopping:
                self.stats.reason = _native.REASON_RESET_A if a_to_b else _native.REASON_RESET_B
            self._abort()
            return
        self._end_direction(dst)

    def _count(self, a_to_b: bool, n: int) -> None:
        if a_to_b:
            self.stats.bytes_a_to_b += n
        else:
            self.stats.bytes_b_to_a += n

    def _end_direction(self, dst: ByteStream) -> None:
        """Pass the EOF on: a plain socket half-closes; TLS here cannot, so both end."""
        if isinstance(dst, SocketStream):
            dst.write_eof()
        else:
            self._abort()

    async def _watch_idle(self) -> None:
        assert self._idle
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, self._last + self._idle - loop.time()))
            if loop.time() - self._last >= self._idle:
                self.close(_native.REASON_IDLE_TIMEOUT)
                return

    async def _send_keepalives(self, framed: list[FramedStream]) -> None:
        """An empty frame to each framed side nothing was written to for an interval."""
        assert self._keepalive
        loop = asyncio.get_running_loop()
        while True:
            due = min(s.last_write for s in framed) + self._keepalive
            await asyncio.sleep(max(0.01, due - loop.time()))
            for stream in framed:
                if loop.time() - stream.last_write >= self._keepalive:
                    with contextlib.suppress(*_RESETS):
                        await stream.keepalive()


def _framed_layer(stream: object) -> FramedStream | None:
    """The `-ping` layer of a stream, however deep (TLS inside a framed stream)."""
    while stream is not None and not isinstance(stream, FramedStream):
        stream = getattr(stream, "inner", None)
    return stream


def _settle(done: asyncio.Future[str], reason: str) -> None:
    if not done.done():
        done.set_result(reason)
