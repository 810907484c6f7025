"""Pure-Python twin of the native relay (mwiproxy/_native/_relay.pyx): the same API and
the same close reasons, plain or TLS sides (tls_py.TLSStream), either of them `-ping`
framed, driven by the loop's own readiness callbacks (so it runs Python per chunk; it
exists for MWIPROXY_NO_EXTENSIONS=1 and as the reference in tests).

The ends it reads and writes are relay_ends_py's, the owner's verdicts on a held
message relay_held_py's, the per-loop engines (counters only) relay_engine_py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import struct
import time
from collections.abc import Callable

from .counters import check_slot
from .inspect_py import Gate
from .mgoaudit_py import Tap as MgoTap
from .myaudit_py import Tap as MyTap
from .pgaudit_py import AuditFeed
from .rdsaudit_py import Tap as RdsTap
from .relay_ends_py import End, FramedEnd, InnerTLSEnd, PlainEnd, TLSEnd, is_tls, keeper_of
from .relay_engine_py import close_engine, engine_for, engines_for
from .relay_held_py import HeldVerdicts
from .relaytypes import (
    MONGO_MAX_MESSAGE,
    REASON_CLOSE_TIMEOUT,
    REASON_CLOSED,
    REASON_EOF,
    REASON_ERROR,
    REASON_IDLE_TIMEOUT,
    REASON_RESET_A,
    REASON_RESET_B,
    Framing,
    RelayStats,
    check_audit,
    check_close_reason,
    check_inspect,
    check_max_message,
    mongo_allowed,
    timeout_ms,
)
from .tls_py import InnerTLSParts, TLSParts, TLSStream

__all__ = ["Relay", "close_engine", "engine_for", "engines_for"]

_FAREWELL_S = 5.0  # bound on a farewell when the relay has no close timeout (MWI_FAREWELL_MS)
_ORDERLY = (REASON_CLOSED, REASON_IDLE_TIMEOUT, REASON_CLOSE_TIMEOUT)
_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class _Direction:
    """src -> dst. While `pending` holds unwritten bytes src is not read (backpressure)."""

    __slots__ = ("src", "dst", "src_side", "pending", "eof", "shut", "bytes", "chunks",
                 "blocked", "gate", "answer")

    def __init__(self, src: End, dst: End, src_side: int) -> None:
        self.src, self.dst, self.src_side = src, dst, src_side
        self.pending: memoryview | None = None
        self.eof = self.shut = self.blocked = False
        self.bytes = self.chunks = 0
        self.gate: Gate | None = None  # side a's messages, inspected (a -> b only)
        self.answer: memoryview | None = None  # to side a behind pending (relay_held_py)


class Relay(HeldVerdicts):
    """Joins two connected stream sockets (it owns both fds from here on). Each side is
    a plain fd or a handshaken TLSStream (its TLS state and socket are taken over), and may
    speak the `-ping` framing (framed_a / framed_b: a relaytypes.Framing).

    inspect ("resp", "mysql", "mongodb"): side A's messages are framed and the protocol's
    marked ones held (csrc/mwi_inspect.h): reading A pauses and on_held(message) is called
    on the loop (None: A broke the framing); then resume(), resume(replacement),
    answer(reply) (relay_held_py), or close(farewell, reason=...).
    mongodb: inspect_allowed (the `$db` names that pass natively), inspect_max_message.
    Side B must not be framed then."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        a: int | TLSStream,
        b: int | TLSStream,
        on_done: Callable[[str], object] | None = None,
        idle_timeout: float | None = None,
        close_timeout: float | None = None,
        framed_a: Framing | None = None,
        framed_b: Framing | None = None,
        counter_slot: int | None = None,
        inspect: str | None = None,
        on_held: Callable[[bytes | None], object] | None = None,
        inspect_allowed: tuple[str, ...] = (),
        inspect_max_message: int = MONGO_MAX_MESSAGE,
        audit: str | None = None,
        on_audit: Callable[[list[bytes]], object] | None = None,
        audit_wait: bool = False,
    ) -> None:
        check_slot(counter_slot)
        check_audit(audit, on_audit, inspect)
        self._audit = None if audit is None or on_audit is None else AuditFeed(
            loop, on_audit, MyTap() if audit == "mysql" else RdsTap() if audit == "redis"
            else MgoTap() if audit == "mongodb" else None)
        check_inspect(inspect, on_held, framed_b)
        mongo_allowed(inspect_allowed)
        check_max_message(inspect_max_message)
        self._inspect_opts = (tuple(inspect_allowed), inspect_max_message)
        fds = [_side_fd(a), _side_fd(b)]
        if fds[0] < 0 or fds[1] < 0 or fds[0] == fds[1]:
            raise ValueError("two distinct open fds are needed")
        for side, framing in ((a, framed_a), (b, framed_b)):
            if framing is not None:
                framing.check(isinstance(side, TLSStream) and side.framed)
        self._framing = (framed_a, framed_b)
        self._loop = loop
        # from here the relay owns both sides: an int is an fd, a stream gives up its parts
        self._sides: list[int | TLSParts | InnerTLSParts] = [
            side.take() if isinstance(side, TLSStream) else side for side in (a, b)]
        self._ends: tuple[End, End] | None = None
        self._dirs: tuple[_Direction, _Direction] | None = None
        self._on_done = on_done
        self._idle_ms = timeout_ms(idle_timeout)
        self._close_ms = timeout_ms(close_timeout)
        self._last_active = self._half_closed = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self._errno = 0
        self._started = False
        self._bye: memoryview | None = None  # a farewell to side A is being said
        self._close_reason = REASON_CLOSED
        self._inspect, self._on_held = inspect, on_held
        # the engine's slot this relay's bytes also add to ([a->b, b->a]), like the native
        self._counter = None if counter_slot is None else \
            engine_for(loop).counters.sums[counter_slot]

    # -- public API ---------------------------------------------------------------------

    def start(self) -> None:
        if self._started or not self._sides:
            raise RuntimeError("relay already started")
        ends: list[End] = []
        for side, framing in zip(self._sides, self._framing, strict=True):
            base: PlainEnd
            if isinstance(side, InnerTLSParts):
                base = InnerTLSEnd(side)
                keeper = base.keeper()
                if keeper is not None:  # framed inside the TLS: the relay times keepalives
                    keeper.keepalive_ms = timeout_ms(framing.keepalive) if framing else 0
                    ends.append(base)
                    continue
            elif isinstance(side, TLSParts):
                base = TLSEnd(side)
            else:  # OSError (ENOTSOCK, EBADF) like the native one
                base = PlainEnd(socket.socket(fileno=side))
            ends.append(base if framing is None else FramedEnd(base, framing))
        for end in ends:
            end.sock.setblocking(False)
            with contextlib.suppress(OSError):
                end.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a, b = ends
        self._ends = (a, b)
        self._dirs = (_Direction(a, b, 0), _Direction(b, a, 1))
        if self._inspect is not None:
            self._dirs[0].gate = Gate(self._inspect, *self._inspect_opts)
        self._started = True
        self._last_active = time.monotonic()
        for d in self._dirs:
            self._loop.add_reader(d.src.sock.fileno(), self._on_readable, d)
            if is_tls(d.src):  # records read during setup raise no readiness
                self._loop.call_soon(self._on_readable, d)
        self._arm_timer()

    def close(self, farewell_a: bytes | bytearray | memoryview = b"",
              reason: str = REASON_CLOSED) -> None:
        """Ask the relay to end; on_done("closed") follows unless it ended already.

        farewell_a: said to side A before it is closed. Nothing more is read from either
        side; what was already read from B reaches A first, then the farewell, then the
        usual close. Bounded by close_timeout (5 s when none); the first farewell given is
        the one said. Same rules as the native mwi_relay_close_farewell. `reason`: what
        the relay ends as (closed, refused, protocol, error)."""
        check_close_reason(reason)
        bye = bytes(memoryview(farewell_a))
        if self._reason is not None or self._bye is not None:
            return  # ended, or saying farewell already (bounded)
        self._close_reason = reason
        if not self._started:
            for side in self._sides:
                with contextlib.suppress(OSError):
                    (socket.socket(fileno=side) if isinstance(side, int) else side.sock).close()
            self._sides = []
            self._reason = reason
            return
        if not bye:
            self._finish(reason)
            return
        self._say_farewell(bye)

    @property
    def audit_dropped(self) -> int:
        """Audit records dropped (the native relay's, when the owner is behind): never here."""
        return 0

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
        if self._reason is not None or self._bye is not None or d.eof or d.blocked:
            return
        if (d.gate is not None and d.gate.paused) or not _reading(d, self._audit):
            return
        try:
            data = d.src.recv()
        except OSError as exc:
            self._fail(d.src_side, exc)
            return
        if data is None:
            return
        if not data:
            self._got_eof(d)
            return
        d.chunks += 1
        if self._audit is not None:  # side a stops before a malformed message
            data = self._audit.feed(d.src_side, data)
            if d.src_side == 0 and self._audit.stopped:
                self._loop.remove_reader(d.src.sock.fileno())
                if not data:  # nothing of this chunk goes on
                    return
        if d.gate is not None:
            self._gate_out(d, d.gate.feed(data))
        else:
            d.pending = memoryview(data)
            self._flush(d)
        if self._reason is None and not d.blocked and _reading(d, self._audit) \
                and d.src.buffered():
            self._loop.call_soon(self._on_readable, d)  # decrypted bytes wait inside TLS

    def _on_writable(self, d: _Direction) -> None:
        if self._bye is not None:
            return
        self._flush(d)
        if self._reason is None and not d.blocked and d.eof:
            self._shut(d)

    def _flush(self, d: _Direction) -> None:
        while True:
            try:
                d.dst.flush()
                if d.pending is None:
                    if d.answer is None:
                        break
                    d.answer = _rest(d.answer, d.dst.send(d.answer))  # not B's: uncounted
                    continue
                n = d.dst.send(d.pending)
            except (BlockingIOError, InterruptedError):
                if not d.blocked:  # the receiver is full: stop reading src until it drains
                    d.blocked = True
                    self._loop.remove_reader(d.src.sock.fileno())
                    self._loop.add_writer(d.dst.sock.fileno(), self._on_writable, d)
                return
            except OSError as exc:
                self._fail(1 - d.src_side, exc)
                return
            d.bytes += n
            if self._counter is not None:
                self._counter[d.src_side] += n
            self._last_active = time.monotonic()
            d.pending = d.pending[n:] if n < len(d.pending) else None
        if d.blocked:
            d.blocked = False
            self._loop.remove_writer(d.dst.sock.fileno())
            if not d.eof and _reading(d, self._audit):
                self._loop.add_reader(d.src.sock.fileno(), self._on_readable, d)
                if d.src.buffered():
                    self._loop.call_soon(self._on_readable, d)

    def _gate_out(self, d: _Direction, out: bytes) -> None:
        """Forward what the gate let through; if it paused on a message (or a violation),
        stop reading side A and tell the owner (on_held: the message, or None)."""
        assert d.gate is not None
        if out:  # behind what still waits for B (a resume while B was full)
            d.pending = memoryview(out if d.pending is None else bytes(d.pending) + out)
        if d.gate.paused:
            self._loop.remove_reader(d.src.sock.fileno())
            if self._on_held is not None:
                self._loop.call_soon(self._held, d.gate.waiting)
        self._flush(d)

    def _held(self, message: bytes | None) -> None:
        if self._reason is None and self._on_held is not None:
            self._on_held(message)

    def _got_eof(self, d: _Direction) -> None:
        d.eof = True
        self._loop.remove_reader(d.src.sock.fileno())
        if not self._half_closed:
            self._half_closed = time.monotonic()
            self._arm_timer()
        if d.pending is None and not d.blocked:
            self._shut(d)

    def _shut(self, d: _Direction) -> None:
        if not d.shut:
            with contextlib.suppress(OSError):  # peer gone: its read side will say so
                d.dst.shut_wr()
            d.shut = True
        assert self._dirs is not None
        if all(x.shut for x in self._dirs):
            self._finish(REASON_EOF)

    def _fail(self, side: int, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLError):  # a TLS failure: no errno, like the native EPROTO
            self._finish(REASON_ERROR, errno.EPROTO)
        elif isinstance(exc, _RESETS):
            self._finish(REASON_RESET_A if side == 0 else REASON_RESET_B, exc.errno or 0)
        else:
            self._finish(REASON_ERROR, exc.errno or 0)

    # -- the owner's close with a farewell to side A ---------------------------------------

    def _say_farewell(self, bye: bytes) -> None:
        assert self._ends is not None and self._dirs is not None
        self._bye = memoryview(bye)
        for d in self._dirs:  # nothing more is read, nothing more goes to B
            self._loop.remove_reader(d.src.sock.fileno())
        self._loop.remove_writer(self._ends[1].sock.fileno())
        if self._dirs[1].eof:  # A has (or is about to get) its end of stream: no farewell
            self._bye = memoryview(b"")
        if self._timer is not None:
            self._timer.cancel()
        bound = self._close_ms / 1000 if self._close_ms else _FAREWELL_S
        self._timer = self._loop.call_later(bound, self._finish, REASON_CLOSED)
        self._pump_farewell()

    def _pump_farewell(self) -> None:
        """What B already sent goes to A first, then the farewell (A gets a prefix of B's
        stream, then the farewell whole), then the end."""
        assert self._ends is not None and self._dirs is not None and self._bye is not None
        a, ba = self._ends[0], self._dirs[1]
        if self._reason is not None:
            return
        try:
            a.flush()
            while ba.pending is not None:
                n = a.send(ba.pending)
                ba.bytes += n
                if self._counter is not None:
                    self._counter[1] += n
                ba.pending = ba.pending[n:] if n < len(ba.pending) else None
            while ba.answer is not None:
                ba.answer = _rest(ba.answer, a.send(ba.answer))
            while self._bye:
                self._bye = self._bye[a.send(self._bye):]
            a.flush()
        except (BlockingIOError, InterruptedError):
            self._loop.add_writer(a.sock.fileno(), self._pump_farewell)
            return
        except OSError:
            pass  # A is gone: the end is the same
        self._finish(REASON_CLOSED)

    # -- timers and the end ---------------------------------------------------------------

    def _deadline(self) -> float | None:
        deadlines = []
        if self._idle_ms:
            deadlines.append(self._last_active + self._idle_ms / 1000)
        if self._close_ms and self._half_closed:
            deadlines.append(self._half_closed + self._close_ms / 1000)
        deadlines += [end.last_write + end.keepalive_ms / 1000 for end in self._keepalive_ends()]
        return min(deadlines) if deadlines else None

    def _keepalive_ends(self) -> list[FramedEnd]:
        """Framings with a keepalive interval that are still written to."""
        assert self._dirs is not None
        return [k for d in self._dirs
                if (k := keeper_of(d.dst)) is not None and k.keepalive_ms and not d.shut]

    def _send_keepalives(self, now: float) -> None:
        """An empty frame to each framed end nothing was written to for its interval; an
        end being written to right now needs none (its frame is on the way)."""
        assert self._dirs is not None
        for d in self._dirs:
            end = keeper_of(d.dst)
            if (end is not None and end.keepalive_ms and not d.shut
                    and end.last_write + end.keepalive_ms / 1000 <= now):
                if d.pending is None and not d.blocked and not d.eof:
                    try:
                        end.keepalive()
                    except OSError as exc:
                        self._fail(1 - d.src_side, exc)
                        return
                end.last_write = now

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
        self._send_keepalives(now)
        if self._reason is not None:
            return
        closing = self._close_ms and self._half_closed and (
            self._half_closed + self._close_ms / 1000 <= now)
        if closing or (self._idle_ms and self._last_active + self._idle_ms / 1000 <= now):
            self._finish(REASON_CLOSE_TIMEOUT if closing else REASON_IDLE_TIMEOUT)
        else:
            self._arm_timer()  # activity moved the deadline, or keepalives went: sleep again

    def _finish(self, reason: str, err: int = 0) -> None:
        if self._reason is not None:
            return
        if self._bye is not None:  # the owner asked: whatever happened on the way out
            reason, err = self._close_reason, 0
        self._reason, self._errno = reason, err
        if self._timer is not None:
            self._timer.cancel()
        assert self._ends is not None
        if reason in (REASON_RESET_A, REASON_RESET_B):
            # pass the reset on: the surviving side's peer gets an RST, not a clean FIN
            other = self._ends[1 if reason == REASON_RESET_A else 0].sock
            with contextlib.suppress(OSError):
                other.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for end in self._ends:
            if reason in _ORDERLY and is_tls(end):
                with contextlib.suppress(OSError):
                    end.shut_wr()  # close_notify, best effort, like the native engine
            self._loop.remove_reader(end.sock.fileno())
            self._loop.remove_writer(end.sock.fileno())
            if self._bye is not None and end is self._ends[0]:
                _discard_input(end.sock)
            end.sock.close()
        if self._audit is not None:  # its last records go before on_done
            self._audit.end()
        cb, self._on_done = self._on_done, None
        if cb is not None:
            self._loop.call_soon(cb, reason)  # like the native engine: never re-entrant


def _rest(data: memoryview, sent: int) -> memoryview | None:
    return data[sent:] if sent < len(data) else None


def _reading(d: _Direction, audit: AuditFeed | None = None) -> bool:
    """src is read: not while its gate waits for a verdict, nor past a malformed message."""
    if audit is not None and audit.stopped and d.src_side == 0:
        return False
    return d.gate is None or not d.gate.paused


def _discard_input(sock: socket.socket) -> None:
    """Unread bytes at close() make the kernel answer with an RST, which can destroy a
    farewell still in flight: drop what the peer sent meanwhile (bounded, never waits)."""
    with contextlib.suppress(OSError):
        for _ in range(64):
            if not sock.recv(16384):
                return


def _side_fd(side: int | TLSStream) -> int:
    """The fd of one relay side; a TLSStream must be handshaken (checked before anything
    is taken over, so a refused relay leaves both sides to the caller)."""
    if isinstance(side, TLSStream):
        side._require_handshake()
        return side.fileno
    if isinstance(side, int):
        return side
    raise TypeError(f"a relay side is an fd or a pure TLSStream, not {type(side).__name__}")
