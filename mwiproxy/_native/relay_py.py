"""Pure-Python twin of the native relay (mwiproxy/_native/_relay.pyx): the same API and
the same close reasons, driven by the loop's own readiness callbacks (so it runs Python
per chunk; it exists for MWIPROXY_NO_EXTENSIONS=1 and as the reference in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable

from .relaytypes import (
    REASON_CLOSE_TIMEOUT,
    REASON_CLOSED,
    REASON_EOF,
    REASON_ERROR,
    REASON_IDLE_TIMEOUT,
    REASON_RESET_A,
    REASON_RESET_B,
    RelayStats,
    timeout_ms,
)

_CHUNK = 64 * 1024
_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class _Direction:
    """src -> dst. While `pending` holds unwritten bytes src is not read (backpressure)."""

    __slots__ = ("src", "dst", "src_side", "pending", "eof", "shut", "bytes", "chunks",
                 "blocked")

    def __init__(self, src: socket.socket, dst: socket.socket, src_side: int) -> None:
        self.src, self.dst, self.src_side = src, dst, src_side
        self.pending: memoryview | None = None
        self.eof = self.shut = self.blocked = False
        self.bytes = self.chunks = 0


class Relay:
    """Joins two connected stream sockets (it owns both fds from here on)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd_a: int,
        fd_b: int,
        on_done: Callable[[str], object] | None = None,
        idle_timeout: float | None = None,
        close_timeout: float | None = None,
    ) -> None:
        if fd_a < 0 or fd_b < 0 or fd_a == fd_b:
            raise ValueError("two distinct open fds are needed")
        self._loop = loop
        self._fds: tuple[int, int] | None = (fd_a, fd_b)
        self._socks: tuple[socket.socket, socket.socket] | None = None
        self._dirs: tuple[_Direction, _Direction] | None = None
        self._on_done = on_done
        self._idle_ms = timeout_ms(idle_timeout)
        self._close_ms = timeout_ms(close_timeout)
        self._last_active = self._half_closed = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self._errno = 0
        self._started = False

    # -- public API ---------------------------------------------------------------------

    def start(self) -> None:
        if self._started or self._fds is None:
            raise RuntimeError("relay already started")
        socks = []
        for fd in self._fds:
            sock = socket.socket(fileno=fd)  # OSError (ENOTSOCK, EBADF) like the native one
            socks.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a, b = socks
        self._socks = (a, b)
        self._dirs = (_Direction(a, b, 0), _Direction(b, a, 1))
        self._started = True
        self._last_active = time.monotonic()
        for d in self._dirs:
            self._loop.add_reader(d.src.fileno(), self._on_readable, d)
        self._arm_timer()

    def close(self) -> None:
        """Ask the relay to end; on_done("closed") follows unless it ended already."""
        if self._reason is not None:
            return
        if not self._started:
            for fd in self._fds or ():
                with contextlib.suppress(OSError):
                    socket.socket(fileno=fd).close()
            self._fds = None
            self._reason = REASON_CLOSED
            return
        self._finish(REASON_CLOSED)

    def stats(self) -> RelayStats:
        if self._dirs is None:
            return RelayStats(0, 0, 0, 0)
        ab, ba = self._dirs
        return RelayStats(ab.bytes, ba.bytes, ab.chunks, ba.chunks)

    @property
    def done(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def errno(self) -> int:
        return self._errno

    # -- data path ----------------------------------------------------------------------

    def _on_readable(self, d: _Direction) -> None:
        try:
            data = d.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(d.src_side, exc)
            return
        if not data:
            self._got_eof(d)
            return
        d.chunks += 1
        d.pending = memoryview(data)
        self._flush(d)

    def _on_writable(self, d: _Direction) -> None:
        self._flush(d)

    def _flush(self, d: _Direction) -> None:
        while d.pending is not None:
            try:
                n = d.dst.send(d.pending)
            except (BlockingIOError, InterruptedError):
                if not d.blocked:  # the receiver is full: stop reading src until it drains
                    d.blocked = True
                    self._loop.remove_reader(d.src.fileno())
                    self._loop.add_writer(d.dst.fileno(), self._on_writable, d)
                return
            except OSError as exc:
                self._fail(1 - d.src_side, exc)
                return
            d.bytes += n
            self._last_active = time.monotonic()
            d.pending = d.pending[n:] if n < len(d.pending) else None
        if d.blocked:
            d.blocked = False
            self._loop.remove_writer(d.dst.fileno())
            self._loop.add_reader(d.src.fileno(), self._on_readable, d)

    def _got_eof(self, d: _Direction) -> None:
        d.eof = True
        self._loop.remove_reader(d.src.fileno())
        if not self._half_closed:
            self._half_closed = time.monotonic()
            self._arm_timer()
        if d.pending is None:
            self._shut(d)

    def _shut(self, d: _Direction) -> None:
        if not d.shut:
            with contextlib.suppress(OSError):  # peer gone: its read side will say so
                d.dst.shutdown(socket.SHUT_WR)
            d.shut = True
        assert self._dirs is not None
        if all(x.shut for x in self._dirs):
            self._finish(REASON_EOF)

    def _fail(self, side: int, exc: OSError) -> None:
        if isinstance(exc, _RESETS):
            self._finish(REASON_RESET_A if side == 0 else REASON_RESET_B, exc.errno or 0)
        else:
            self._finish(REASON_ERROR, exc.errno or 0)

    # -- timers and the end ---------------------------------------------------------------

    def _deadline(self) -> float | None:
        deadlines = []
        if self._idle_ms:
            deadlines.append(self._last_active + self._idle_ms / 1000)
        if self._close_ms and self._half_closed:
            deadlines.append(self._half_closed + self._close_ms / 1000)
        return min(deadlines) if deadlines else None

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._deadline()
        if deadline is not None and self._reason is None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        deadline = self._deadline()
        if deadline is None or deadline > now:
            self._arm_timer()  # activity moved the deadline: sleep again
            return
        closing = self._close_ms and self._half_closed and (
            self._half_closed + self._close_ms / 1000 <= now)
        self._finish(REASON_CLOSE_TIMEOUT if closing else REASON_IDLE_TIMEOUT)

    def _finish(self, reason: str, err: int = 0) -> None:
        if self._reason is not None:
            return
        self._reason, self._errno = reason, err
        if self._timer is not None:
            self._timer.cancel()
        assert self._socks is not None
        if reason in (REASON_RESET_A, REASON_RESET_B):
            # pass the reset on: the surviving side's peer gets an RST, not a clean FIN
            other = self._socks[1 if reason == REASON_RESET_A else 0]
            with contextlib.suppress(OSError):
                other.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
            sock.close()
        cb, self._on_done = self._on_done, None
        if cb is not None:
            self._loop.call_soon(cb, reason)  # like the native engine: never re-entrant


def engine_for(loop: asyncio.AbstractEventLoop, **config: object) -> None:
    """The pure build has no engine; kept so both builds offer the same names."""
    return None


def close_engine(loop: asyncio.AbstractEventLoop) -> None:
    return None
