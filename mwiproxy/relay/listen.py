"""The one accept layer: a listening socket (TCP or Unix) whose connections are accepted
by the native core (`_native.Acceptor`: accept4, and with a server `context` the TLS
handshake, on the engine's worker thread; Python called once per connection) and served
each in its own task. The local proxy and the database agent's link port use it; the
cluster port drives the same acceptor in its routing mode (proxy/listener.py).

On top of the bare Acceptor it keeps what a server needs:
- Admission caps (`limits` = (total, per_source)): how many connections may be
  unauthenticated at once, in all and per source address. The acceptor keeps them (one
  place, in C or its twin) and closes a connection over either cap at accept, unread;
  `Admission` is the owner's view: the counts and a refusal log line per interval. A
  connection counts from accept until its handshake completes (TLS mode) or its serving
  task calls `Listener.authenticated()` (or ends).
- A queueing connection cap (`max_connections`), exact: callers over the cap are never
  reset, they wait their turn in the kernel's accept queue (the listen backlog). The
  acceptor is granted a slot per connection (`Acceptor.grant`: the cap at start, one
  more per connection that ended) and takes nobody off the socket without one, so
  nobody is ever held accepted here.
- `drain(timeout)` and `close()`; Unix sockets (mode 0600, parent made 0700, a stale
  socket from an earlier run replaced, a live one left alone); TCP_NODELAY (set by the
  acceptor); failures logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from mwiproxy import _native
from mwiproxy.wire.addr import TCP, UNIX, Address

log = logging.getLogger("mwiproxy.relay.listen")

# gets the accepted connection (and owns it from then on) and the peer as text: a socket,
# or with a TLS `context` a handshaken _native.TLSStream
Serve = Callable[[Any, str], Awaitable[None]]
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
REFUSAL_LOG_INTERVAL = 10.0  # s: refusals are logged as one line per interval
HANDSHAKE_TIMEOUT = 10.0  # s: TLS mode, accept to handshaken
UNIX_PEER = _native.UNIX_SOURCE  # the source of a Unix socket connection (no address)


class Admission:
    """The owner's view of an acceptor's admission caps (the acceptor counts, in one
    place): `pending` connections not yet authenticated, `refused` at accept since
    start. Refusals are logged at most once per `log_interval`, with the count since the
    last line: the acceptor hands over the first refusal after a quiet interval
    (`noticed`), the rest are read from its counters."""

    def __init__(self, total: int, per_source: int, where: str,
                 log_interval: float = REFUSAL_LOG_INTERVAL) -> None:
        if not 0 < per_source <= total:
            raise ValueError("need 0 < per_source <= total")
        self.total, self.per_source = total, per_source
        self._where = where
        self._log_interval = log_interval
        self._acceptor: _native.Acceptor | None = None
        self._logged = 0
        self._last_source = ""
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def limits(self) -> tuple[int, int]:
        return self.total, self.per_source

    def attach(self, acceptor: _native.Acceptor | None) -> None:
        self._acceptor = acceptor

    @property
    def pending(self) -> int:
        return self._acceptor.stats().pending if self._acceptor is not None else 0

    @property
    def refused(self) -> int:
        return self._acceptor.stats().capped if self._acceptor is not None else 0

    def release(self, source: str) -> None:
        if self._acceptor is not None:
            self._acceptor.release(source)

    def noticed(self, source: str) -> None:
        """The acceptor refused one from `source` after a quiet interval: say so now."""
        self._last_source = source
        if self._timer is None and self._acceptor is not None and not self._closed:
            self._log(1, self._acceptor.stats())

    def _log_refusals(self) -> None:
        """One line for the refusals since the last one, then again after an interval
        only if there were more; a quiet interval re-arms the acceptor's notice."""
        self._timer = None
        if self._acceptor is None or self._closed:
            return
        st = self._acceptor.stats()
        if st.capped <= self._logged:
            self._acceptor.arm_notice()
        else:
            self._log(st.capped - self._logged, st)

    def _log(self, count: int, st: _native.AcceptorStats) -> None:
        log.warning("refused %d new connections %s: too many not yet authenticated (%d of "
                    "at most %d in all, at most %d per source address; last refused from "
                    "%s; %d refused since start)", count, self._where, st.pending,
                    self.total, self.per_source, self._last_source, self._logged + count)
        self._logged += count
        self._timer = asyncio.get_running_loop().call_later(self._log_interval,
                                                            self._log_refusals)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True  # the counts stay readable


class Listener:
    """Listens on `addr` and serves each accepted connection with `serve(conn, peer)` in
    a task of its own (`conns`); the connection is closed when `serve` returns unless it
    took it (detach; the relay's take). With a server `context` the handshake runs on the
    acceptor (within `handshake_timeout`) and `conn` is a handshaken TLSStream; else it
    is a socket. `max_connections` 0 means no cap."""

    def __init__(self, addr: Address, serve: Serve, *, admission: Admission | None = None,
                 max_connections: int = 0, what: str = "connection",
                 context: _native.TLSContext | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 on_handshake: Callable[[float], object] | None = None) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be 0 (no cap) or more")
        self.addr = addr
        self._serve = serve
        self._admission = admission
        self._cap = max_connections
        self._what = what
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._on_handshake = on_handshake  # seconds from accept to handshaken (TLS mode)
        self._sock: socket.socket | None = None
        self._acceptor: _native.Acceptor | None = None
        self._stopped = asyncio.Event()
        self._unauthenticated: dict[asyncio.Task[None], str] = {}  # task -> source
        self._accept_errors_seen = 0
        self.conns: set[asyncio.Task[None]] = set()

    # -- what callers read ---------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound TCP host and port (port 0 asked → the one the kernel chose)."""
        assert self._sock is not None and self.addr.scheme == TCP
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def active(self) -> int:
        return len(self.conns)

    @property
    def accepting(self) -> bool:
        """Listening (a paused cap still listens: callers queue in the backlog)."""
        return self._sock is not None

    @property
    def full(self) -> bool:
        """At the cap: listening, but the acceptor takes no one off the backlog."""
        return bool(self._cap) and len(self.conns) >= self._cap

    def stats(self) -> _native.AcceptorStats:
        """The acceptor's counters."""
        if self._acceptor is None:
            return _native.AcceptorStats(*[0] * len(_native.AcceptorStats._fields))
        return self._acceptor.stats()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._sock = _listen(self.addr)
        self._acceptor = _native.Acceptor(
            asyncio.get_running_loop(), self._sock, self._on_accept, self._context,
            self._handshake_timeout,
            limits=self._admission.limits if self._admission is not None else None,
            on_handshake=self._on_handshake)
        if self._admission is not None:
            self._admission.attach(self._acceptor)
        if self._cap:
            self._acceptor.grant(self._cap)

    def set_context(self, context: _native.TLSContext) -> None:
        """A reload: new handshakes use `context`, those under way keep theirs."""
        self._context = context
        if self._acceptor is not None and not self._acceptor.closed:
            self._acceptor.set_context(context)

    async def wait(self) -> None:
        """Until the listener stops accepting (drain, close)."""
        await self._stopped.wait()

    def authenticated(self) -> None:
        """The calling connection task has authenticated: it no longer counts against
        the admission caps (in TLS mode it stopped counting at its handshake)."""
        task = asyncio.current_task()
        source = self._unauthenticated.pop(task, None) if task is not None else None
        if source is not None and self._admission is not None:
            self._admission.release(source)

    async def stop_accepting(self) -> None:
        """Close the listening socket: connections being served go on; callers still
        waiting for a slot (in the backlog) are turned away."""
        self._stopped.set()
        if self._acceptor is not None:
            self._acceptor.close()  # what it accepted before still comes: closed then
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # the worker closes its dup a moment later
            self._sock.shutdown(socket.SHUT_RD)
        self._sock.close()
        self._sock = None
        if self.addr.scheme == UNIX:
            with contextlib.suppress(OSError):
                os.unlink(self.addr.path)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting; wait up to `timeout` s for open sessions; cut what is left.
        True when every session ended on its own."""
        await self.stop_accepting()
        pending = set(self.conns)
        if pending:
            log.info("draining: waiting up to %.0fs for %d open %s(s)", timeout,
                     len(pending), self._what)
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain timeout: cut %d %s(s) still open", len(pending), self._what)
            await asyncio.wait(pending)
        return not pending

    async def close(self, wait: float = 0) -> None:
        """Stop accepting, then cancel the connections' tasks (waiting up to `wait`)."""
        await self.stop_accepting()
        if self._admission is not None:
            self._admission.close()
        for task in list(self.conns):
            task.cancel()
        if wait and self.conns:
            await asyncio.wait(self.conns, timeout=wait)

    # -- a connection --------------------------------------------------------------------

    def _on_accept(self, conn: Any) -> None:
        """Called by the acceptor, once per accepted connection."""
        if isinstance(conn, _native.Accepted):  # the first cap refusal in a while
            if self._admission is not None:
                self._admission.noticed(conn.source)
            return
        taken = self._take(conn)
        if taken is None:
            return
        self._note_accept_errors()
        if self._sock is None:  # accepted before a stop, handed over after it
            taken[0].close()
        else:
            self._spawn(*taken)  # within the cap: the acceptor had a slot for it

    def _take(self, conn: Any) -> tuple[Any, str, str] | None:
        """(connection, source, peer) of what the acceptor handed over."""
        try:
            if isinstance(conn, int):
                conn = socket.socket(fileno=conn)
                conn.setblocking(False)
                sock = conn
            else:  # a handshaken TLSStream: its fd stays its own
                sock = socket.socket(fileno=conn.fileno)
            try:
                source, peer = _peer(sock)
            finally:
                if sock is not conn:
                    sock.detach()
        except OSError as e:  # the caller hung up before we looked
            conn.close() if not isinstance(conn, int) else os.close(conn)
            log.info("dropped a %s that ended at once: %s", self._what, e)
            self._slot_back()
            return None
        return conn, source, peer

    def _spawn(self, conn: Any, source: str, peer: str) -> None:
        task = asyncio.ensure_future(self._run(conn, peer))
        self.conns.add(task)
        if self._admission is not None and self._context is None:
            self._unauthenticated[task] = source  # counted until authenticated()
        task.add_done_callback(self._ended)

    async def _run(self, conn: Any, peer: str) -> None:
        try:
            await self._serve(conn, peer)
        finally:
            conn.close()  # a no-op once handed on (detached, taken) or closed

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.conns.discard(task)
        source = self._unauthenticated.pop(task, None)
        if source is not None and self._admission is not None:
            self._admission.release(source)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", self._what, exc_info=task.exception())
        self._slot_back()

    def _slot_back(self) -> None:
        """A connection ended: the acceptor may take the next caller."""
        if self._cap and self._acceptor is not None and not self._acceptor.closed:
            self._acceptor.grant(1)

    def _note_accept_errors(self) -> None:
        """The acceptor pauses itself on EMFILE and friends and counts it; say so here."""
        errors = self.stats().accept_errors
        if errors > self._accept_errors_seen:
            log.warning("%d accept(s) failed on %s (out of file descriptors?); the port "
                        "kept listening", errors - self._accept_errors_seen, self.addr)
            self._accept_errors_seen = errors


def _peer(sock: socket.socket) -> tuple[str, str]:
    """(source address, peer as text) of an accepted connection."""
    if sock.family == socket.AF_UNIX:
        return UNIX_PEER, UNIX_PEER
    host, port = sock.getpeername()[:2]
    return host, f"{host}:{port}"


def _listen(addr: Address) -> socket.socket:
    if addr.scheme == UNIX:
        return _listen_unix(addr.path)
    family = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((addr.host, addr.port), family=family, backlog=BACKLOG)


def _listen_unix(path: str) -> socket.socket:
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)  # the socket file is born 0600: no window
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale(path: str) -> None:
    """A socket file nobody listens on is left from an earlier run: remove it. One that
    answers belongs to a running process: refuse rather than steal its address."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # not a socket: bind fails with EADDRINUSE and says so
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running process")
