# Acceptors (included by _relay.pyx): csrc/mwi_accept.c accepts on the engine's worker
# thread and runs TLS handshakes there; Python hears once per connection, when it is ready.

import socket as _socket

from mwiproxy._native.relaytypes import AcceptorStats


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


@cython.no_gc_clear
cdef class Acceptor:
    """Accepts connections on a listening socket (which stays the caller's) and calls
    on_accept(conn) once per connection: conn is the accepted fd, or with a server
    `context` a handshaken TLSStream on it. Either way the callback owns it. Connections
    whose handshake fails or outlasts `handshake_timeout` are closed and only counted."""

    def __init__(self, loop, sock, on_accept, TLSContext context=None,
                 handshake_timeout=10.0):
        cdef Engine engine = engine_for(loop)
        cdef int err = 0
        cdef uint32_t hs_ms = timeout_ms(handshake_timeout)
        cdef int fd = _listen_fd(sock)
        if context is not None and not context.server_side:
            raise ValueError("an acceptor needs a server-side TLS context")
        self.engine = engine
        self.loop = loop
        self.on_accept = on_accept
        self.context = context
        self.aid = engine.next_id
        engine.next_id += 1
        self.a = mwi_acceptor_new(engine.eng, fd, context.ctx if context is not None else NULL,
                                  hs_ms, self.aid, &err)
        if self.a == NULL:
            raise OSError(err, os.strerror(err))
        mwi_acceptor_start(self.a)
        engine.acceptors[self.aid] = self

    def close(self):
        """Stop accepting (the listening socket itself stays open)."""
        if self.a == NULL:
            return
        self._final = self._stats_now()
        self.engine.acceptors.pop(self.aid, None)
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
            return AcceptorStats(0, 0, 0, 0, 0, 0)
        mwi_acceptor_stats_get(self.a, &st)
        return AcceptorStats(st.accepted, st.handed, st.handshake_failed,
                             st.handshake_timeouts, st.accept_errors, st.handshaking)

    cdef void _deliver(self, int fd, mwi_tls *t):
        conn = fd if t == NULL else _adopt_stream(self.loop, self.context, fd, t)
        try:
            self.on_accept(conn)
        except BaseException as exc:
            self.loop.call_exception_handler({"message": "acceptor on_accept callback failed",
                                              "exception": exc})


cdef void _drop_conn(int fd, mwi_tls *t):
    if t != NULL:
        mwi_tls_free(t)
    os.close(fd)
