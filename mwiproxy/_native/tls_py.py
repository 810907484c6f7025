"""Pure-Python twin of the native TLS contexts and setup streams (_tls.pxi): the stdlib's
ssl.SSLContext with an SSLObject over memory BIOs, driven by the loop's sock_* calls.

Same API, same rules, same error texts as the native build (see tlstypes.TLSError).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import ssl
import time
from collections.abc import Iterator
from typing import NamedTuple

from cryptography import x509

from mwiproxy.wire import ping

from .relaytypes import Framing
from .tlstypes import (
    VERIFY_NONE,
    VERIFY_OPTIONAL,
    TLSError,
    alpn_wire,
    check_pems,
)

_HANDSHAKE_EOF = "the peer closed the connection during the TLS handshake"
MAX_SESSIONS = 8  # a client context's sessions (csrc/mwi_tls_int.h MWI_TLS_SESSIONS)
_KEYLEN = 400  # MWI_TLS_KEYLEN: a longer key is neither offered nor kept


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    """PEM bytes as a path the ssl module can load, never written to disk."""
    fd = os.memfd_create("mwiproxy-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def tls_error(exc: ssl.SSLError) -> TLSError:
    """An ssl exception in the native build's words (OpenSSL's reason strings)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"certificate verify failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TLSError(_HANDSHAKE_EOF)
    reason = getattr(exc, "reason", None)
    return TLSError(reason.lower().replace("_", " ") if reason else str(exc))


class Sessions:
    """A client context's sessions, by "<server name>|<peer address>" (the native rules,
    csrc/mwi_tls.c): at most MAX_SESSIONS, expired ones dropped, the oldest stored goes
    first. Only resumable sessions are kept (a ticket or a session id: TLS 1.3 has
    neither until its ticket arrives after the handshake), and none past the server
    certificate's notAfter (a resumed session skips verifying it again)."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[ssl.SSLSession, int]] = {}  # with its end of life

    def get(self, key: str) -> ssl.SSLSession | None:
        kept = self._by_key.get(key)
        if kept is None:
            return None
        if kept[1] <= int(time.time()):
            del self._by_key[key]  # the server would refuse it: drop it
            return None
        return kept[0]

    def keep(self, key: str, session: ssl.SSLSession, not_after: int | None = None) -> None:
        if not key or len(key) >= _KEYLEN or not (session.has_ticket or session.id):
            return
        until = session.time + session.timeout
        if not_after is not None:
            until = min(until, not_after)
        now = int(time.time())
        self._by_key.pop(key, None)
        if len(self._by_key) >= MAX_SESSIONS:
            stale = [k for k, (_, end) in self._by_key.items() if end <= now]
            del self._by_key[stale[0] if stale else next(iter(self._by_key))]
        self._by_key[key] = (session, until)

    def __len__(self) -> int:
        now = int(time.time())
        return sum(end > now for _, end in self._by_key.values())


def session_key(sock: socket.socket, server_name: str | None) -> str:
    """Where a client's sessions are kept: the name it asks for and the peer's address
    (agents sharing a name, or databases reached with none, get their own)."""
    try:
        addr = sock.getpeername()
    except OSError:
        return f"{server_name or ''}|"
    if sock.family == socket.AF_INET:
        peer = f"{addr[0]}:{addr[1]}"
    elif sock.family == socket.AF_INET6:
        peer = f"[{addr[0].split('%')[0]}]:{addr[1]}"
    elif sock.family == socket.AF_UNIX:
        peer = f"unix:{addr if isinstance(addr, str) else ''}"
    else:
        peer = ""
    return f"{server_name or ''}|{peer}"


class TLSContext:
    """A server or client TLS context from PEM bytes: TLS >= 1.2, peers verified against
    exactly `ca_pem`, ALPN selected (server) or offered (client), tickets on. A client
    context keeps a few sessions (per server name and address) and its streams resume
    them: the cache lives here, so a new certificate (a new context) starts without."""

    def __init__(self, server_side: bool, cert_pem: bytes | None = None,
                 key_pem: bytes | None = None, ca_pem: bytes | None = None,
                 verify: str = "required", alpn: list[str] | None = None) -> None:
        alpn_wire(alpn)
        check_pems(server_side, cert_pem, key_pem, ca_pem, verify)
        self.server_side = server_side
        self.verify = verify
        self.alpn_protocols = tuple(alpn or ())
        self.sessions = Sessions()  # client only
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_IGNORE_UNEXPECTED_EOF
        if verify == VERIFY_NONE:
            ctx.verify_mode = ssl.CERT_NONE
        elif verify == VERIFY_OPTIONAL and server_side:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca_pem:
                ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
            if cert_pem and key_pem:
                with _memfile(cert_pem) as cert, _memfile(key_pem) as key:
                    ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot load the certificates or key: {exc}") from None
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if server_side:
            ctx.num_tickets = 1
            ctx.sni_callback = _remember_sni
        self.ssl_context = ctx

    @property
    def cached_sessions(self) -> int:
        """How many unexpired sessions a client context keeps (0 for a server)."""
        return len(self.sessions)


def _remember_sni(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
    obj._mwi_sni = name  # type: ignore[attr-defined]


class TLSParts(NamedTuple):
    """What a relay takes over from a handshaken stream."""

    sock: socket.socket
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO


class TLSStream:
    """One TLS connection during setup, on a connected socket fd that the stream owns
    from here on (pass `sock.detach()`): close() closes it, unless a Relay took it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, context: TLSContext, fd: int,
                 server_hostname: str | None = None) -> None:
        if fd < 0:
            raise ValueError("an open fd is needed")
        self.context = context
        self._loop = loop
        self._sock: socket.socket | None = socket.socket(fileno=fd)
        self._sock.setblocking(False)
        self._start_tls(server_hostname)

    def _start_tls(self, server_hostname: str | None) -> None:
        """The SSL object over memory BIOs (a client offers its session for the name and
        address, if its context keeps one)."""
        context = self.context
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        name = server_hostname if not context.server_side else None
        self._session_key = "" if context.server_side else session_key(self._live(), name)
        self._kept: ssl.SSLSession | None = None
        session = context.sessions.get(self._session_key) if self._session_key else None
        self._obj = context.ssl_context.wrap_bio(
            self._in, self._out, server_side=context.server_side,
            server_hostname=name or None, session=session)
        self._handshaken = False

    @property
    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def close(self) -> None:
        """Free the TLS state and close the socket (no close_notify: see aclose)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Send close_notify (best effort), then close."""
        await self._say_close_notify()
        self.close()

    async def _say_close_notify(self) -> None:
        if self._sock is not None and self._handshaken:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._obj.unwrap()
            with contextlib.suppress(OSError):
                await self._flush()

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ValueError("TLS stream is closed (or handed to a relay)")
        return self._sock

    async def _flush(self) -> None:
        if self._out.pending:
            await self._loop.sock_sendall(self._live(), self._out.read())

    async def _fill(self) -> None:
        data = await self._loop.sock_recv(self._live(), 65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def _keep_session(self) -> None:
        """Store a new session (after the handshake, and TLS 1.3 tickets after reads)."""
        if self.context.server_side or not self._session_key:
            return
        session = self._obj.session
        if session is not None and session != self._kept:
            self._kept = session
            self.context.sessions.keep(self._session_key, session, self._peer_not_after())

    def _peer_not_after(self) -> int | None:
        der = self._obj.getpeercert(binary_form=True)
        if der is None:
            return None
        return int(x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp())

    async def handshake(self, initial: bytes = b"") -> None:
        """Run the handshake. `initial`: bytes already read from the socket (a ClientHello
        peeked by classify), processed before anything else read from it."""
        self._live()
        if initial:
            self._in.write(initial)
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                with contextlib.suppress(OSError):
                    await self._flush()  # the alert tells the peer why
                raise tls_error(exc) from None
            await self._flush()
            self._handshaken = True
            self._keep_session()
            return

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to max_bytes of plaintext; b"" at the end of the stream."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        while True:
            self._live()
            try:
                data = self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise tls_error(exc) from None
            self._keep_session()  # TLS 1.3 tickets arrive after the handshake
            return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of data."""
        self._live()
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise tls_error(exc) from None
        await self._flush()

    def _require_handshake(self) -> None:
        self._live()
        if not self._handshaken:
            raise ValueError("the handshake has not completed")

    def peer_cert_der(self) -> bytes | None:
        """The peer's certificate (DER), or None if it sent none."""
        self._require_handshake()
        return self._obj.getpeercert(binary_form=True)

    def alpn(self) -> str | None:
        self._require_handshake()
        return self._obj.selected_alpn_protocol()

    def version(self) -> str:
        self._require_handshake()
        return self._obj.version() or ""

    def server_name(self) -> str | None:
        """SNI: the name a client asked for (server side) or sent (client side)."""
        self._live()
        if self.context.server_side:
            return getattr(self._obj, "_mwi_sni", None)
        return self._obj.server_hostname

    def session_reused(self) -> bool:
        self._require_handshake()
        return bool(self._obj.session_reused)

    def wrap_inner(self, context: TLSContext, server_hostname: str | None = None,
                   framing: Framing | None = None) -> TLSStream:
        """TLS inside this one (a PostgreSQL client's own TLS carried in the local proxy's
        TLS): a new stream whose records are this stream's plaintext. It takes this
        stream's TLS state and socket over (this one is closed from here on); run its
        handshake(initial) next. A Relay takes it like any TLSStream.

        `framing`: the records travel inside `-ping` framing on this stream's plaintext,
        from where the setup phase's deframer stopped (its keepalive is the relay's
        business). Such a stream is `framed`."""
        self._require_handshake()
        if framing is not None:
            framing.check()
        carrier = copy.copy(self)  # the same socket, SSLObject and BIOs, now the inner's
        self._sock = None
        return _InnerTLSStream(carrier, context, server_hostname, framing)

    @property
    def framed(self) -> bool:
        """Its records travel inside `-ping` framing (wrap_inner(framing=...))."""
        return False

    def take(self) -> TLSParts | InnerTLSParts:
        """Hand the TLS state and the socket over (to a Relay)."""
        self._require_handshake()
        sock, self._sock = self._live(), None
        return TLSParts(sock, self._obj, self._in, self._out)


class InnerTLSParts(NamedTuple):
    """What a relay takes over from a handshaken stream inside another one; `framing`:
    where its deframer stands, if its records travel in `-ping` frames."""

    outer: TLSParts
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    framing: Framing | None = None

    @property
    def sock(self) -> socket.socket:
        return self.outer.sock


class _InnerTLSStream(TLSStream):
    """TLS whose records travel in the plaintext of `carrier` (see TLSStream.wrap_inner),
    framed if a deframer is given."""

    def __init__(self, carrier: TLSStream, context: TLSContext,
                 server_hostname: str | None, framing: Framing | None) -> None:
        self._carrier = carrier
        self.context = context
        self._loop = carrier._loop
        self._sock = carrier._sock  # for fileno and liveness; the carrier does the I/O
        self._deframer = (None if framing is None
                          else ping.Deframer(framing.header, framing.payload_left))
        self._start_tls(server_hostname)

    @property
    def framed(self) -> bool:
        return self._sock is not None and self._deframer is not None

    def close(self) -> None:
        self._sock = None
        self._carrier.close()

    async def aclose(self) -> None:
        """Send both close_notifys, inner first (best effort), then close."""
        await self._say_close_notify()
        self._sock = None
        await self._carrier.aclose()

    async def _flush(self) -> None:
        self._live()
        if self._out.pending:
            data = self._out.read()
            await self._carrier.write(data if self._deframer is None else ping.frame(data))

    async def _fill(self) -> None:
        self._live()
        while True:
            data = await self._carrier.read(65536)
            if not data:
                if self._deframer is not None and self._deframer.mid_frame:
                    raise ConnectionResetError("the framed stream ended inside a frame")
                self._in.write_eof()
                return
            if self._deframer is not None:
                data = self._deframer.feed(data)  # only keepalives: read on
            if data:
                self._in.write(data)
                return

    def take(self) -> InnerTLSParts:
        self._require_handshake()
        self._sock = None
        outer = self._carrier.take()
        assert isinstance(outer, TLSParts)
        d = self._deframer
        framing = None if d is None else Framing(None, d.header, d.payload_left)
        return InnerTLSParts(outer, self._obj, self._in, self._out, framing)
