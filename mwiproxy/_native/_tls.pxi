# TLS contexts and setup-phase streams (included by _relay.pyx: the relay takes a
# handshaken stream's OpenSSL state over, so both live in one extension module).
#
# The setup phase is not the hot path: handshakes and the few protocol messages before a
# relay starts are driven from the loop with add_reader/add_writer (one callback per
# readiness change, a handful per connection). Everything after runs in the engine.

from libc.string cimport strlen

from mwiproxy._native.tlstypes import TLSError, alpn_wire, check_pems, verify_mode


cdef const char *_ptr(bytes b):
    return <const char *>b if b else NULL


cdef class TLSContext:
    """A server or client TLS context from PEM bytes: TLS >= 1.2, peers verified against
    exactly `ca_pem`, ALPN selected (server) or offered (client), tickets on. A client
    context keeps a few sessions (per server name and address) and its streams resume
    them: the cache lives here, so a new certificate (a new context) starts without.

    Immutable: to swap certificates, build a new context and use it for new streams;
    connections made with the old one keep it alive until they end."""

    def __init__(self, bint server_side, bytes cert_pem=None, bytes key_pem=None,
                 bytes ca_pem=None, str verify="required", alpn=None):
        cdef char err[MWI_TLS_ERRLEN]
        cdef bytes wire = alpn_wire(alpn)
        cdef int mode = verify_mode(verify)
        check_pems(server_side, cert_pem, key_pem, ca_pem, verify)
        self.ctx = mwi_tls_ctx_new(
            server_side, _ptr(cert_pem), len(cert_pem or b""), _ptr(key_pem),
            len(key_pem or b""), _ptr(ca_pem), len(ca_pem or b""),
            <mwi_tls_verify>mode, <const unsigned char *>_ptr(wire),
            len(wire), err, sizeof(err))
        if self.ctx == NULL:
            raise ValueError(err.decode("utf-8", "replace"))
        self.server_side = server_side
        self.verify = verify
        self.alpn_protocols = tuple(alpn or ())

    @property
    def cached_sessions(self):
        """How many unexpired sessions a client context keeps (0 for a server)."""
        return mwi_tls_ctx_sessions(self.ctx)

    def __dealloc__(self):
        if self.ctx != NULL:
            mwi_tls_ctx_unref(self.ctx)   # streams and relays hold their own references
            self.ctx = NULL


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


cdef class TLSStream:
    """One TLS connection during setup, on a connected socket fd that the stream owns
    from here on (pass `sock.detach()`): close() closes it, unless a Relay took it."""

    def __init__(self, loop, TLSContext context not None, int fd, str server_hostname=None):
        cdef char err[MWI_TLS_ERRLEN]
        cdef bytes name = server_hostname.encode("idna") if server_hostname else None
        if fd < 0:
            raise ValueError("an open fd is needed")
        _set_nonblocking(fd)
        self.t = mwi_tls_new(context.ctx, fd, _ptr(name), err, sizeof(err))
        if self.t == NULL:
            raise ValueError(err.decode("utf-8", "replace"))
        self.context = context
        self.loop = loop
        self.fd = fd

    def __dealloc__(self):
        if self.t != NULL:
            mwi_tls_free(self.t)
            self.t = NULL
            os.close(self.fd)

    def _close(self):
        if self.t != NULL:
            mwi_tls_free(self.t)
            self.t = NULL
            os.close(self.fd)
        self.fd = -1

    def close(self):
        """Free the TLS state and close the socket (no close_notify: see aclose)."""
        self._close()

    async def aclose(self):
        """Send close_notify (best effort), then close."""
        if self.t != NULL and self.handshaken:
            while True:
                st = mwi_tls_shutdown(self.t)
                if st not in (MWI_TLS_WANT_READ, MWI_TLS_WANT_WRITE):
                    break
                await self._wait(st)
        self._close()

    @property
    def fileno(self):
        return self.fd

    cdef object _error(self, int st):
        cdef int e = mwi_tls_errno(self.t)
        msg = mwi_tls_error(self.t).decode("utf-8", "replace")
        if e:
            return OSError(e, msg)   # ConnectionResetError and friends
        return TLSError(msg)

    def _live(self):
        if self.t == NULL:
            raise ValueError("TLS stream is closed (or handed to a relay)")

    async def _wait(self, int st):
        fut = self.loop.create_future()
        if st == MWI_TLS_WANT_READ:
            self.loop.add_reader(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self.loop.remove_reader(self.fd)
        else:
            self.loop.add_writer(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self.loop.remove_writer(self.fd)

    async def handshake(self, bytes initial=b""):
        """Run the handshake. `initial`: bytes already read from the socket (a ClientHello
        peeked by classify), processed before anything else read from it."""
        cdef int st
        self._live()
        if initial and mwi_tls_feed(self.t, <const char *>initial, len(initial)) != 0:
            raise MemoryError()
        while True:
            self._live()
            st = mwi_tls_handshake(self.t)
            if st == MWI_TLS_OK:
                self.handshaken = True
                return
            if st == MWI_TLS_ERROR:
                raise self._error(st)
            await self._wait(st)

    async def read(self, Py_ssize_t max_bytes=65536):
        """Up to max_bytes of plaintext; b"" at the end of the stream."""
        cdef bytearray buf = bytearray(max_bytes)
        cdef char *p = buf
        cdef ssize_t n
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        while True:
            self._live()
            n = mwi_tls_read(self.t, p, max_bytes)
            if n > 0:
                return bytes(buf[:n])
            if n == MWI_TLS_EOF:
                return b""
            if n == MWI_TLS_ERROR:
                raise self._error(<int>n)
            await self._wait(<int>n)

    async def write(self, data):
        """Send all of data (bytes-like)."""
        cdef bytes chunk = bytes(data)
        cdef const char *p = chunk
        cdef Py_ssize_t off = 0, total = len(chunk)
        cdef ssize_t n
        while off < total:
            self._live()
            n = mwi_tls_write(self.t, p + off, total - off)
            if n > 0:
                off += n
            elif n == MWI_TLS_ERROR:
                raise self._error(<int>n)
            else:
                await self._wait(<int>n)

    def _require_handshake(self):
        self._live()
        if not self.handshaken:
            raise ValueError("the handshake has not completed")

    def peer_cert_der(self):
        """The peer's certificate (DER), or None if it sent none."""
        cdef int n
        cdef bytearray buf
        self._require_handshake()
        n = mwi_tls_peer_cert_der(self.t, NULL, 0)
        if n == 0:
            return None
        buf = bytearray(n)
        mwi_tls_peer_cert_der(self.t, <unsigned char *><char *>buf, n)
        return bytes(buf)

    def alpn(self):
        cdef unsigned n = 0
        cdef const char *p
        self._require_handshake()
        p = mwi_tls_alpn(self.t, &n)
        return p[:n].decode("ascii") if p != NULL else None

    def version(self):
        self._require_handshake()
        return mwi_tls_version(self.t).decode("ascii")

    def server_name(self):
        """SNI: the name a client asked for (server side) or sent (client side)."""
        cdef const char *p
        self._live()
        p = mwi_tls_server_name(self.t)
        return p[:strlen(p)].decode("ascii") if p != NULL else None

    def session_reused(self):
        self._require_handshake()
        return bool(mwi_tls_session_reused(self.t))

    def wrap_inner(self, TLSContext context not None, str server_hostname=None,
                   framing=None):
        """TLS inside this one (a PostgreSQL client's own TLS carried in the local proxy's
        TLS): a new stream whose records are this stream's plaintext. It takes this
        stream's TLS state and fd over (this one is closed from here on); run its
        handshake(initial) next. A Relay takes it like any TLSStream.

        `framing` (a relaytypes.Framing): the records travel inside `-ping` framing on this
        stream's plaintext, from where the setup phase's deframer stopped (its header and
        payload_left; its keepalive is the relay's business). Such a stream is `framed`."""
        cdef char err[MWI_TLS_ERRLEN]
        cdef bytes name = server_hostname.encode("idna") if server_hostname else None
        cdef bytes hdr = bytes(framing.header) if framing is not None else b""
        cdef mwi_tls *inner
        cdef TLSStream s
        cdef int rc
        self._require_handshake()
        if framing is not None:
            framing.check()
        inner = mwi_tls_new_inner(context.ctx, self.t, _ptr(name), err, sizeof(err))
        if inner == NULL:
            raise ValueError(err.decode("utf-8", "replace"))
        s = TLSStream.__new__(TLSStream)
        s.t = inner
        s.context = context
        s.loop = self.loop
        s.fd = self.fd
        self.t = NULL   # the inner connection owns ours now
        self.fd = -1
        if framing is not None:
            rc = mwi_tls_set_framed(inner, _ptr(hdr), len(hdr), framing.payload_left)
            if rc:
                raise OSError(rc, "cannot frame the inner TLS")
        return s

    @property
    def framed(self):
        """Its records travel inside `-ping` framing (wrap_inner(framing=...))."""
        return self.t != NULL and bool(mwi_tls_framed(self.t))

    cdef mwi_tls *_take(self) except NULL:
        """Hand the TLS state and the fd over (to a Relay)."""
        cdef mwi_tls *t
        self._require_handshake()
        t = self.t
        self.t = NULL
        self.fd = -1
        return t


def _set_nonblocking(int fd):
    os.set_blocking(fd, False)
