"""The steady-state relay between two connected streams: the one place bytes are copied.

Both ends plain sockets → the sockets leave asyncio and `_native.Relay` joins them (no
Python per chunk). Otherwise (a TLS end, until the native core relays TLS) an asyncio
copy: large reads, backpressure through drain(), half-close where the transport allows
it, close-on-EOF where it does not (TLS), an optional idle timeout, byte counters.
Callers see one API either way, so the native TLS path can replace the copy here.

A side that negotiated a `-ping` ALPN name is *framed* (`wire/ping.py`): what is read
from it is deframed, what is written to it is framed, and with `keepalive` set an empty
frame is sent to it whenever nothing was written to it for that many seconds. Framed
pipes always take the asyncio copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.wire import ping

CHUNK = 256 * 1024
CLOSE_TIMEOUT = 5.0
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_RESETS = (ConnectionError, ssl.SSLError, OSError)


@dataclass
class PipeStats:
    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    reason: str = ""


def _plain_fd(stream: Stream) -> int | None:
    reader, writer = stream
    sock = writer.get_extra_info("socket")
    if writer.get_extra_info("ssl_object") is not None or sock is None:
        return None
    if getattr(reader, "_buffer", b""):  # bytes asyncio already read stay with asyncio
        return None
    return int(sock.fileno())


class Pipe:
    """Relays a ↔ b until both directions end, either side fails, or close() is called."""

    def __init__(self, a: Stream, b: Stream, *, idle_timeout: float | None = None,
                 close_timeout: float = CLOSE_TIMEOUT, allow_native: bool = True,
                 framed_a: bool = False, framed_b: bool = False,
                 keepalive: float | None = None) -> None:
        self._a, self._b = a, b
        self._idle = idle_timeout
        self._close_timeout = close_timeout
        self._framed = (framed_a, framed_b)
        self._allow_native = allow_native and not (framed_a or framed_b)
        self._keepalive = keepalive if framed_a or framed_b else None
        self.stats = PipeStats()
        self._relay: _native.Relay | None = None
        self._last = 0.0
        self._last_write = [0.0, 0.0]  # loop time of the last write to side a, side b

    def close(self, reason: str = _native.REASON_CLOSED, farewell_to_a: bytes = b"") -> None:
        """Cut both sides now (a lock, an expired certificate, shutdown). A farewell is
        flushed to side a before it closes (asyncio copy only)."""
        if not self.stats.reason:
            self.stats.reason = reason
        if self._relay is not None:
            self._relay.close()
            return
        a_writer = self._a[1]
        if farewell_to_a and not a_writer.is_closing():
            with contextlib.suppress(*_RESETS):
                a_writer.write(farewell_to_a)
                a_writer.close()
        else:
            a_writer.transport.abort()
        self._b[1].transport.abort()

    async def run(self) -> PipeStats:
        fds = (_plain_fd(self._a), _plain_fd(self._b))
        if self._allow_native and fds[0] is not None and fds[1] is not None:
            return await self._run_native(fds[0], fds[1])
        return await self._run_copy()

    # -- native: plain ↔ plain ---------------------------------------------------------

    async def _run_native(self, fd_a: int, fd_b: int) -> PipeStats:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        dup_a, dup_b = os.dup(fd_a), os.dup(fd_b)
        for _, writer in (self._a, self._b):
            writer.transport.abort()  # the relay owns the duplicated fds from here on
        self._relay = _native.Relay(
            loop, dup_a, dup_b, lambda reason: _settle(done, reason),
            idle_timeout=self._idle, close_timeout=self._close_timeout)
        self._relay.start()
        reason = await done
        counters = self._relay.stats()
        self.stats.bytes_a_to_b = counters.bytes_a_to_b
        self.stats.bytes_b_to_a = counters.bytes_b_to_a
        self.stats.reason = self.stats.reason or reason
        return self.stats

    # -- asyncio copy ------------------------------------------------------------------

    async def _run_copy(self) -> PipeStats:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._last_write = [self._last, self._last]
        tasks = {asyncio.ensure_future(self._copy(self._a, self._b, True)),
                 asyncio.ensure_future(self._copy(self._b, self._a, False))}
        watchdog = asyncio.ensure_future(self._watch_idle()) if self._idle else None
        pinger = asyncio.ensure_future(self._send_keepalives()) if self._keepalive else None
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=self._close_timeout)
            if pending:
                self.close(_native.REASON_CLOSE_TIMEOUT)
                await asyncio.wait(pending)
        finally:
            for task in tasks:
                task.cancel()
            for helper in (watchdog, pinger):
                if helper is not None:
                    helper.cancel()
            for _, writer in (self._a, self._b):
                writer.transport.abort()
        self.stats.reason = self.stats.reason or _native.REASON_EOF
        return self.stats

    async def _copy(self, src: Stream, dst: Stream, a_to_b: bool) -> None:
        reader, writer = src[0], dst[1]
        loop = asyncio.get_running_loop()
        src_side, dst_side = (0, 1) if a_to_b else (1, 0)
        deframer = ping.Deframer() if self._framed[src_side] else None
        frame_out = self._framed[dst_side]
        try:
            while data := await reader.read(CHUNK):
                if deframer is not None and not (data := deframer.feed(data)):
                    continue  # only keepalives
                writer.write(ping.frame(data) if frame_out else data)
                self._count(a_to_b, len(data))
                self._last = self._last_write[dst_side] = loop.time()
                await writer.drain()
        except _RESETS:
            self.close(_native.REASON_RESET_A if a_to_b else _native.REASON_RESET_B)
            return
        if deframer is not None and deframer.mid_frame:  # truncated: not a clean end
            self.close(_native.REASON_RESET_A if a_to_b else _native.REASON_RESET_B)
            return
        self._end_direction(writer)

    def _count(self, a_to_b: bool, n: int) -> None:
        if a_to_b:
            self.stats.bytes_a_to_b += n
        else:
            self.stats.bytes_b_to_a += n

    @staticmethod
    def _end_direction(writer: asyncio.StreamWriter) -> None:
        """Pass the EOF on; TLS cannot half-close, so there the whole side is closed."""
        with contextlib.suppress(*_RESETS):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()

    async def _watch_idle(self) -> None:
        assert self._idle
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, self._last + self._idle - loop.time()))
            if loop.time() - self._last >= self._idle:
                self.close(_native.REASON_IDLE_TIMEOUT)
                return

    async def _send_keepalives(self) -> None:
        """An empty frame to each framed side nothing was written to for an interval."""
        assert self._keepalive
        loop = asyncio.get_running_loop()
        framed = [side for side in (0, 1) if self._framed[side]]
        while True:
            due = min(self._last_write[side] for side in framed) + self._keepalive
            await asyncio.sleep(max(0.01, due - loop.time()))
            for side in framed:
                writer = (self._a, self._b)[side][1]
                idle = loop.time() - self._last_write[side] >= self._keepalive
                if idle and not writer.is_closing():
                    writer.write(ping.KEEPALIVE)
                    self._last_write[side] = loop.time()


def _settle(done: asyncio.Future[str], reason: str) -> None:
    if not done.done():
        done.set_result(reason)


async def pipe(a: Stream, b: Stream, *, idle_timeout: float | None = None) -> PipeStats:
    return await Pipe(a, b, idle_timeout=idle_timeout).run()
