# Acceptors (included by _relay.pyx): csrc/mwi_accept.c accepts on the engine's worker
# thread, peeks and classifies the first bytes, runs TLS handshakes there and keeps the
# admission caps; Python hears once per connection, when it is ready.

import socket as _socket

from mwiproxy._native.relaytypes import (
    ACC_CAPPED,
    ACC_RAW,
    UNIX_SOURCE,
    ACC_REFUSED,
    ACC_TLS,
    Accepted,
    AcceptorStats,
    alpn_names,
    check_limits,
)
from mwiproxy._native.tlstypes import alpn_wire


cdef extern from "<netdb.h>" nogil:
    int getnameinfo(const sockaddr *sa, socklen_t salen, char *host, size_t hostlen,
                    char *serv, size_t servlen, int flags)
    enum:
        NI_NUMERICHOST
        NI_NUMERICSERV

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<sys/un.h>" nogil:
    cdef struct sockaddr_un:
        unsigned short sun_family

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        pass
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in:
        unsigned short sin_family
        in_addr sin_addr
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        in6_addr sin6_addr
    enum:
        AF_INET
        AF_INET6
        AF_UNIX


cdef TLSStream _adopt_stream(loop, TLSContext context, int fd, mwi_tls *t):
    """A handshaken TLSStream around TLS state the engine made."""
    cdef TLSStream stream = TLSStream.__new__(TLSStream)
    stream.t = t
    stream.fd = fd
    stream.context = context
    stream.loop = loop
    stream.handshaken = True
    return stream


cdef int _listen_fd(sock) except -1:
    if isinstance(sock, _socket.socket):
        return sock.fileno()
    if isinstance(sock, int):
        return sock
    raise TypeError(f"a listening socket or its fd is needed, not {type(sock).__name__}")


cdef tuple _peer_text(mwi_accepted *acc):
    """("203.0.113.7:51234", "203.0.113.7"), as the accept loop always wrote peers;
    ("local", "local") for a Unix socket's peer (it has no address)."""
    cdef char host[64]
    cdef char serv[16]
    if acc.peer_len > 0 and (<sockaddr *>&acc.peer).sa_family == AF_UNIX:
        return UNIX_SOURCE, UNIX_SOURCE
    if acc.peer_len == 0 or getnameinfo(<sockaddr *>&acc.peer, acc.peer_len, host,
                                        sizeof(host), serv, sizeof(serv),
                                        NI_NUMERICHOST | NI_NUMERICSERV) != 0:
        return "?:0", "?"
    ip = host.decode("ascii")
    return f"{ip}:{serv.decode('ascii')}", ip


@cython.no_gc_clear
cdef class Acceptor:
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

    def __init__(self, loop, sock, on_accept, TLSContext context=None,
                 handshake_timeout=10.0, *, route=None, limits=None, on_handshake=None):
        cdef Engine engine = engine_for(loop)
        cdef int err = 0
        cdef uint32_t hs_ms = timeout_ms(handshake_timeout)
        cdef int fd = _listen_fd(sock)
        cdef bytes wire
        if context is not None and not context.server_side:
            raise ValueError("an acceptor needs a server-side TLS context")
        if route is not None and context is None:
            raise ValueError("routing on the ClientHello needs a server-side TLS context")
        caps = check_limits(limits)
        self.engine = engine
        self.loop = loop
        self.on_accept = on_accept
        self.on_handshake = on_handshake
        self.context = context
        self.routing = route is not None
        self.aid = engine.next_id
        engine.next_id += 1
        self.a = mwi_acceptor_new(engine.eng, fd, context.ctx if context is not None else NULL,
                                  hs_ms, self.aid, &err)
        if self.a == NULL:
            raise OSError(err, os.strerror(err))
        if route is not None:
            wire = alpn_wire(list(route)) or b""
            err = mwi_acceptor_route(self.a, wire, len(wire))
        if err == 0 and caps is not None:
            err = mwi_acceptor_limit(self.a, caps[0], caps[1])
        if err:
            mwi_acceptor_close(self.a)
            self.a = NULL
            raise OSError(err, os.strerror(err))
        mwi_acceptor_start(self.a)
        engine.acceptors[self.aid] = self

    def set_context(self, TLSContext context not None):
        """New handshakes use `context` (a reload); those under way keep theirs."""
        if self.context is None or not context.server_side:
            raise ValueError("only a TLS acceptor takes a new server-side context")
        self.context = context
        if self.a != NULL:
            mwi_acceptor_set_context(self.a, context.ctx)

    def pause(self):
        """Stop accepting; callers wait in the listen backlog. Connections the worker
        accepted before it saw this (at most one batch) are still handed over."""
        self.held = True
        if self.a != NULL:
            mwi_acceptor_hold(self.a, 1)

    def resume(self):
        """Accept again after pause()."""
        self.held = False
        if self.a != NULL:
            mwi_acceptor_hold(self.a, 0)

    @property
    def paused(self):
        return self.held

    def grant(self, n):
        """`n` more slots. From the first grant on, a connection is taken off the
        listening socket only with a slot, spent when it is accepted (within the caps)
        and given back if it is dropped or refused before handover: grant the connection
        cap once and one slot per connection that ended, and never more than the cap is
        handed over; the rest wait in the backlog."""
        if n < 0 or n > 0xFFFFFFF:
            raise ValueError("grant 0 or more slots")
        if self.a != NULL:
            mwi_acceptor_grant(self.a, n)

    def release(self, str source):
        """A connection handed over "raw" from `source` (its IP) no longer counts against
        the caps: it authenticated, or it ended."""
        cdef sockaddr_in sin
        cdef sockaddr_in6 sin6
        cdef bytes ip = source.partition("%")[0].encode("ascii")   # no IPv6 scope
        cdef sockaddr_un sun
        if self.a == NULL:
            return
        if source == UNIX_SOURCE:
            sun.sun_family = AF_UNIX
            mwi_acceptor_release(self.a, <sockaddr *>&sun)
        elif inet_pton(AF_INET, ip, &sin.sin_addr) == 1:
            sin.sin_family = AF_INET
            mwi_acceptor_release(self.a, <sockaddr *>&sin)
        elif inet_pton(AF_INET6, ip, &sin6.sin6_addr) == 1:
            sin6.sin6_family = AF_INET6
            mwi_acceptor_release(self.a, <sockaddr *>&sin6)

    def arm_notice(self):
        """Hand over the next cap refusal (as "capped")."""
        if self.a != NULL:
            mwi_acceptor_arm_notice(self.a)

    def close(self):
        """Stop accepting (the listening socket itself stays open). Connections accepted
        before still reach on_accept; the engine lets go of this acceptor after them."""
        if self.a == NULL:
            return
        self._final = self._stats_now()
        mwi_acceptor_close(self.a)
        self.a = NULL

    def __dealloc__(self):
        if self.a != NULL:     # only if never registered: the engine keeps the rest alive
            mwi_acceptor_close(self.a)
            self.a = NULL

    @property
    def closed(self):
        return self.a == NULL

    def stats(self):
        return self._final if self.a == NULL and self._final is not None else self._stats_now()

    cdef object _stats_now(self):
        cdef mwi_acceptor_stats st
        if self.a == NULL:
            return AcceptorStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        mwi_acceptor_stats_get(self.a, &st)
        return AcceptorStats(st.accepted, st.handed, st.handshake_failed,
                             st.handshake_timeouts, st.accept_errors, st.handshaking,
                             st.refused, st.capped, st.pending, st.capped_source)

    cdef void _deliver(self, mwi_accepted *acc):
        cdef object conn = None
        if acc.outcome == MWI_ACC_CLOSED:   # the last one: every accepted one came before
            self.engine.acceptors.pop(self.aid, None)
            return
        if acc.outcome == MWI_ACC_CAPPED:
            peer, source = _peer_text(acc)
            self._call(Accepted(ACC_CAPPED, None, peer, source,
                                accepted_at=acc.accepted_ns / 1e9,
                                ready_at=acc.ready_ns / 1e9))
            return
        if acc.tls != NULL:
            conn = _adopt_stream(self.loop, self.context, acc.fd, acc.tls)
            if not self.routing and self.on_handshake is not None:
                self._timed((acc.ready_ns - acc.accepted_ns) / 1e9)
        elif acc.fd >= 0:
            conn = acc.fd
        if self.routing:
            peer, source = _peer_text(acc)
            conn = Accepted(_OUTCOMES[acc.outcome], conn, peer, source,
                            mwi_fb_kind_name(acc.kind).decode("ascii"),
                            alpn_names(acc.alpn[:acc.alpn_len] if acc.alpn_len else b""),
                            acc.reason.decode("utf-8", "replace"),
                            acc.accepted_ns / 1e9, acc.ready_ns / 1e9)
        self._call(conn)

    cdef void _timed(self, double seconds):
        try:
            self.on_handshake(seconds)
        except BaseException as exc:
            self.loop.call_exception_handler({"message": "acceptor on_handshake callback "
                                              "failed", "exception": exc})

    cdef void _call(self, conn):
        try:
            self.on_accept(conn)
        except BaseException as exc:
            self.loop.call_exception_handler({"message": "acceptor on_accept callback failed",
                                              "exception": exc})


_OUTCOMES = {MWI_ACC_TLS: ACC_TLS, MWI_ACC_RAW: ACC_RAW, MWI_ACC_REFUSED: ACC_REFUSED,
             MWI_ACC_CAPPED: ACC_CAPPED}


cdef void _drop_conn(mwi_accepted *acc):
    if acc.tls != NULL:
        mwi_tls_free(acc.tls)
    if acc.fd >= 0:
        os.close(acc.fd)
