"""Pure-Python twin of the native Acceptor (_accept.pxi, csrc/mwi_accept.c): the loop
accepts, peeks and drives the handshakes itself (a task per connection). Same API, same
outcomes, same counters, same refusal words."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .firstbytes import KIND_NEED_MORE, KIND_TLS, MAX_RECORD, FirstBytes
from .relaytypes import (
    ACC_CAPPED,
    ACC_RAW,
    ACC_REFUSED,
    ACC_TLS,
    PEER_HUNG_UP,
    UNIX_SOURCE,
    Accepted,
    AcceptorStats,
    check_limits,
    timeout_ms,
)
from .tls_py import TLSContext, TLSStream
from .tlsrec_py import classify
from .tlstypes import TLSError

_ACCEPT_BATCH = 64
_PAUSE = 0.1  # after EMFILE and friends: let fds free up
REC_HEADER = 5
PEEK_SIZE = REC_HEADER + MAX_RECORD  # a ClientHello, whole, in one record


class _Refused(Exception):
    """A connection handed over as "refused" (str: the reason)."""


class _HungUp(Exception):
    """The peer left before handover: counted, no more."""


class Acceptor:
    """Accepts connections on a listening socket (which stays the caller's) and calls
    on_accept once per connection; the callback owns what it is given.

    Without `route`: on_accept(conn), conn the accepted fd, or with a server `context` a
    handshaken TLSStream on it. With `route` (ALPN names; a context is needed): the first
    bytes are peeked (never read) and classified, and on_accept(Accepted) says what came:
    "tls" (a ClientHello offering a routed name, handshaken here), "raw" (anything else:
    the fd unread, with its kind and offered names), "refused" (a ClientHello not whole
    in one record, or a refused handshake: closed, with the reason) or "capped" (the first
    connection closed over an admission cap since arm_notice()). Peers that hang up or
    outlast `handshake_timeout` are closed and only counted.

    `limits` = (total, per_source) caps the connections not yet authenticated: from
    accept until handed over as TLS, or for plain and "raw" ones until release(source).
    Every cap refusal is counted (`capped`); the first since arm_notice() is handed over
    as Accepted("capped", None, peer, source) in every mode. A Unix socket's peers are
    one source, "local".

    pause() stops taking connections off the listening socket (callers wait in its
    backlog) and resume() starts again; nothing is dropped either way. grant(n) paces
    it exactly (see there). close() stops
    for good: connections mid-handshake are dropped (counted as failed), but those
    accepted before still reach on_accept, even after close() returned."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | int,
                 on_accept: Callable[[Any], object], context: TLSContext | None = None,
                 handshake_timeout: float | None = 10.0, *,
                 route: Iterable[str] | None = None,
                 limits: tuple[int, int] | None = None,
                 on_handshake: Callable[[float], object] | None = None) -> None:
        fd = sock.fileno() if isinstance(sock, socket.socket) else sock
        if not isinstance(fd, int):
            raise TypeError(f"a listening socket or its fd is needed, not {type(sock).__name__}")
        if context is not None and not context.server_side:
            raise ValueError("an acceptor needs a server-side TLS context")
        if route is not None and context is None:
            raise ValueError("routing on the ClientHello needs a server-side TLS context")
        self._caps = check_limits(limits)
        self._route = None if route is None else frozenset(route)
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
        self._on_handshake = on_handshake
        self._context = context
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = dict.fromkeys(AcceptorStats._fields, 0)
        self._sources: Counter[str] = Counter()
        self._notice = True
        self._held = False  # pause()
        self._backoff = False  # after EMFILE and friends
        self._budget: int | None = None  # slots left, from the first grant()
        loop.add_reader(listening.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def stats(self) -> AcceptorStats:
        return AcceptorStats(**{**self._counts, "pending": self._sources.total()})

    def set_context(self, context: TLSContext) -> None:
        """New handshakes use `context` (a reload); those under way keep theirs."""
        if self._context is None or not context.server_side:
            raise ValueError("only a TLS acceptor takes a new server-side context")
        self._context = context

    def release(self, source: str) -> None:
        """A connection handed over "raw" from `source` (its IP) no longer counts against
        the caps: it authenticated, or it ended."""
        if self._caps is None or self._sock is None or not self._sources[source]:
            return
        self._sources[source] -= 1
        if not self._sources[source]:
            del self._sources[source]

    def arm_notice(self) -> None:
        """Hand over the next cap refusal (as "capped")."""
        self._notice = True

    @property
    def paused(self) -> bool:
        return self._held

    def pause(self) -> None:
        """Stop accepting; callers wait in the listen backlog. Connections accepted
        before are handed over as usual (here: the ones being handshaken)."""
        self._held = True
        self._watch()

    def resume(self) -> None:
        """Accept again after pause()."""
        self._held = False
        self._watch()

    def grant(self, n: int) -> None:
        """`n` more slots. From the first grant on, a connection is taken off the
        listening socket only with a slot, spent when it is accepted (within the caps)
        and given back if it is dropped or refused before handover: grant the connection
        cap once and one slot per connection that ended, and never more than the cap is
        handed over; the rest wait in the backlog."""
        if not 0 <= n <= 0xFFFFFFF:
            raise ValueError("grant 0 or more slots")
        self._budget = (self._budget or 0) + n
        self._watch()

    def _slot_back(self) -> None:
        if self._budget is not None:
            self._budget += 1
            self._watch()

    def _out_of_slots(self) -> bool:
        return self._budget is not None and self._budget <= 0

    def _watch(self) -> None:
        """Watch the listening socket unless paused, out of slots or backing off after
        EMFILE."""
        if self._sock is None:
            return
        fd = self._sock.fileno()
        if self._held or self._backoff or self._out_of_slots():
            self._loop.remove_reader(fd)
        else:
            self._loop.add_reader(fd, self._readable)

    def close(self) -> None:
        """Stop accepting (the listening socket itself stays open)."""
        if self._sock is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        for task in self._tasks:
            task.cancel()

    def _admit(self, source: str) -> int:
        """1: counted; 0: over the total cap; -1: over the per-source cap."""
        if self._caps is None:
            return 1
        total, per_source = self._caps
        if self._sources.total() >= total:
            return 0
        if self._sources[source] >= per_source:
            return -1
        self._sources[source] += 1
        return 1

    def _readable(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._sock is None or self._held:  # on_accept may pause or close
                return
            if self._out_of_slots():
                self._watch()
                return
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                self._counts["accept_errors"] += 1
                self._pause()
                return
            self._counts["accepted"] += 1
            accepted_at = time.monotonic()
            peer, source = _peer_text(conn, addr)
            admitted = self._admit(source)
            if admitted <= 0:
                conn.close()
                self._capped(peer, source, admitted < 0, accepted_at)
                continue
            if self._budget is not None:
                self._budget -= 1
            conn.setblocking(False)  # as accept4(SOCK_NONBLOCK) hands them over
            with contextlib.suppress(OSError):  # a Unix socket has none; C ignores it too
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is None:
                self._hand(conn.detach(), source)
            else:
                self._spawn(self._serve(conn, peer, source, accepted_at))

    def _spawn(self, coro: Any) -> None:
        self._counts["handshaking"] += 1  # until handover or the end: see _leave
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _capped(self, peer: str, source: str, per_source: bool, accepted_at: float) -> None:
        self._counts["capped"] += 1
        self._counts["capped_source"] += per_source
        if self._notice:
            self._notice = False
            self._call(Accepted(ACC_CAPPED, None, peer, source, accepted_at=accepted_at,
                                ready_at=time.monotonic()))

    def _pause(self) -> None:
        self._backoff = True
        self._watch()

        def resume() -> None:
            self._backoff = False
            self._watch()

        self._loop.call_later(_PAUSE, resume)

    async def _serve(self, conn: socket.socket, peer: str, source: str,
                     accepted_at: float) -> None:
        first: FirstBytes | None = None
        times: dict[str, Any] = {"accepted_at": accepted_at}
        try:
            async with asyncio.timeout(self._timeout):
                if self._route is not None:
                    first = await peek_first_bytes(conn)
                    if not routed(first, self._route):
                        self._hand_raw(conn, peer, source, first, accepted_at)
                        return
                stream = TLSStream(self._loop, self._context, conn.detach())  # type: ignore[arg-type]
                try:
                    await stream.handshake()
                except BaseException:
                    stream.close()
                    raise
        except TimeoutError:
            self._end(conn, source, "handshake_timeouts")
        except _Refused as e:
            self._end(conn, source, "refused")
            self._call(Accepted(ACC_REFUSED, None, peer, source,
                                first.kind if first else KIND_NEED_MORE,
                                first.alpn if first else (), str(e),
                                ready_at=time.monotonic(), **times))
        except TLSError as e:
            if self._route is None or str(e).startswith(PEER_HUNG_UP):
                self._end(conn, source, "handshake_failed")
                return
            self._end(conn, source, "refused")
            self._call(Accepted(ACC_REFUSED, None, peer, source, KIND_TLS,
                                first.alpn if first else (), str(e),
                                ready_at=time.monotonic(), **times))
        except (OSError, _HungUp, asyncio.CancelledError) as e:
            self._end(conn, source, "handshake_failed")
            if isinstance(e, asyncio.CancelledError):
                raise
        else:
            self._leave()
            self._release(source)  # handshaken: the owner authenticates now
            self._counts["handed"] += 1
            if self._route is None:
                if self._on_handshake is not None:
                    self._timed(time.monotonic() - accepted_at)
                self._call(stream)
            else:
                assert first is not None
                self._call(Accepted(ACC_TLS, stream, peer, source, KIND_TLS, first.alpn,
                                    ready_at=time.monotonic(), **times))

    def _leave(self) -> None:
        self._counts["handshaking"] -= 1

    def _end(self, conn: socket.socket, source: str, counter: str) -> None:
        self._slot_back()
        self._leave()
        conn.close()  # a no-op once detached into a (closed) TLSStream
        self._release(source)
        self._counts[counter] += 1

    def _release(self, source: str) -> None:
        if self._caps is not None:
            self.release(source)

    def _hand_raw(self, conn: socket.socket, peer: str, source: str,
                  first: FirstBytes, accepted_at: float) -> None:
        self._leave()
        self._counts["handed"] += 1
        self._call(Accepted(ACC_RAW, conn.detach(), peer, source, first.kind, first.alpn,
                            accepted_at=accepted_at, ready_at=time.monotonic()))

    def _hand(self, fd: int, _source: str) -> None:
        self._counts["handed"] += 1
        self._call(fd)

    def _timed(self, seconds: float) -> None:
        try:
            assert self._on_handshake is not None
            self._on_handshake(seconds)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._loop.call_exception_handler(
                    {"message": "acceptor on_handshake callback failed", "exception": exc})

    def _call(self, conn: object) -> None:
        try:
            self._on_accept(conn)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._loop.call_exception_handler(
                    {"message": "acceptor on_accept callback failed", "exception": exc})


def _peer_text(conn: socket.socket, addr: Any) -> tuple[str, str]:
    """(peer, source) as the native build writes them: "ip:port" and the IP, or "local"
    for a Unix socket's peer."""
    if conn.family == socket.AF_UNIX:
        return UNIX_SOURCE, UNIX_SOURCE
    return f"{addr[0]}:{addr[1]}", str(addr[0])


def routed(first: FirstBytes, route: frozenset[str]) -> bool:
    """A whole ClientHello offering a name this acceptor handshakes itself."""
    return first.kind == KIND_TLS and first.complete and not route.isdisjoint(first.alpn)


def hello_refusal(data: bytes) -> str | None:
    """Why a ClientHello is refused before any parse: the port reads it whole from its
    first record. None when it is not (yet) refused. Same words as csrc/mwi_accept.c."""
    if len(data) < REC_HEADER or data[0] != 22 or data[1] != 3:
        return None
    record = int.from_bytes(data[3:5], "big")
    if record > MAX_RECORD:
        return f"the first TLS record is {record} bytes, over the {MAX_RECORD}-byte limit"
    if 0 < record < 4:
        return ("the ClientHello is spread over several TLS records; this port reads it "
                "whole from a single record")
    if len(data) < REC_HEADER + 4 or data[5] != 1:
        return None
    hello = 4 + int.from_bytes(data[6:9], "big")
    if hello <= record:
        return None
    size = "larger than a TLS record (16 KiB)" if hello > MAX_RECORD else \
        f"spread over several TLS records ({record} bytes in the first)"
    return f"the ClientHello ({hello} bytes) is {size}; this port reads it whole from a " \
        "single record"


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def peek_first_bytes(sock: socket.socket) -> FirstBytes:
    """Classify what the client sent first without taking it off the socket. Between
    peeks SO_RCVLOWAT holds the byte count the classifier still needs, so a client that
    sends a few bytes and stalls costs nothing until it sends more or the deadline."""
    seen = 0
    try:
        while True:
            await _readable(sock)
            data = sock.recv(PEEK_SIZE, socket.MSG_PEEK)
            if len(data) <= seen:  # readable with nothing new: the client hung up
                raise _HungUp
            seen = len(data)
            why = hello_refusal(data)
            if why is not None:
                raise _Refused(why)
            first = classify(data)
            if first.complete or seen >= PEEK_SIZE or \
                    first.kind not in (KIND_NEED_MORE, KIND_TLS):
                return first
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT,
                            min(seen + first.need, PEEK_SIZE))
    finally:
        with contextlib.suppress(OSError):  # the handshake reads with the default mark
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
