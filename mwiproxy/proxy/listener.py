"""The cluster proxy's single TLS port: accept, classify, handshake, route by ALPN.

The native acceptor (_native.Acceptor, csrc/mwi_accept.c) does the per-connection work
on the engine's worker: it accepts, peeks (never reads) the first bytes until the
classifier is done, and for a ClientHello offering a database ALPN name runs the TLS
handshake there; Python hears once per connection. Anything else comes here raw and
unread: the auth API's ClientHello gets a stdlib handshake, a client that speaks
PostgreSQL or HTTP in the clear is told, in its own protocol, that this port needs TLS,
anything else is closed.

Handlers are registered per ALPN protocol name. The client certificate, when offered, is
verified against the user CA during the handshake and decoded into an Identity before a
handler sees the connection. A refused handshake, a ClientHello the port will not read
(over one record) or a certificate without an identity is handed to the injected
`on_refusal` (the cluster audits it, see proxy/refusals.py); a client that sent nothing
in time or hung up mid-handshake is only counted.

Until a connection is handed to its handler it is unauthenticated: it counts against
the `Limits` caps (the acceptor closes connections over them at accept, unread), and the
first bytes plus the handshake must finish within `handshake_timeout`. The handlers
bound the first protocol message themselves (the cluster's first-message timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from mwiproxy import _native
from mwiproxy.config.cluster import ProxyConfig
from mwiproxy.identity.certs import Identity, identity_from_der
from mwiproxy.identity.tlsctx import server_context
from mwiproxy.metrics.cluster import LISTENER_CLUSTER, NoopProxyMetrics
from mwiproxy.proxy.plaintext import refuse as refuse_plaintext
from mwiproxy.proxy.refusals import TLSRefusal, alpn_protocol, metric_reason
from mwiproxy.relay.listen import Admission
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire.alpn import PING_SUFFIX

log = logging.getLogger("mwiproxy.proxy")

# asyncio streams: the auth API; a native TLS stream: the database protocols
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Identity | None, str],
                   Awaitable[None]]
TLSHandler = Callable[[ByteStream, Identity | None, str], Awaitable[None]]
OnRefusal = Callable[[TLSRefusal], None]
HANDSHAKE_TIMEOUT = 10.0
MAX_UNAUTHENTICATED = 2000
MAX_UNAUTHENTICATED_PER_SOURCE = 512
PEEK_SIZE = 5 + 16384  # a TLS record, header included: what the acceptor peeks
STREAM_LIMIT = 1 << 20
BACKLOG = 1024
# when the connection a handler serves was accepted (time.monotonic(), taken by the
# acceptor): set in the connection's own task, read by the handlers (first-byte latency)
ACCEPTED_AT: contextvars.ContextVar[float] = contextvars.ContextVar("accepted_at",
                                                                   default=0.0)


def accepted_at() -> float:
    """time.monotonic() at accept of the connection this task serves (now if unknown)."""
    return ACCEPTED_AT.get() or time.monotonic()


@dataclass(frozen=True)
class Limits:
    """What a client that has not authenticated yet may hold (README "Limits")."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT  # s: first bytes + TLS handshake
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    max_unauthenticated_per_source: int = MAX_UNAUTHENTICATED_PER_SOURCE


def listener_limits(proxy: ProxyConfig) -> Limits:
    """The limits cluster.yaml's `proxy:` section sets."""
    return Limits(proxy.handshake_timeout.total_seconds(), proxy.max_unauthenticated,
                  proxy.max_unauthenticated_per_source)


@dataclass(frozen=True)
class ServerTLS:
    """The proxy's certificate and the CA its clients' certificates must chain to."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes

    def ssl_context(self, protocols: list[str]) -> ssl.SSLContext:
        return server_context(self.cert_pem, self.key_pem, self.client_ca_pem,
                              client_cert="optional", alpn=protocols or None)

    def native_context(self, protocols: list[str]) -> _native.TLSContext:
        return _native.TLSContext(True, self.cert_pem, self.key_pem, self.client_ca_pem,
                                  verify=_native.VERIFY_OPTIONAL, alpn=protocols or None)


class ProxyListener:
    def __init__(self, host: str, port: int, tls_factory: Callable[[], ServerTLS],
                 on_refusal: OnRefusal | None = None, limits: Limits | None = None,
                 metrics: NoopProxyMetrics | None = None) -> None:
        self._host, self._port = host, port
        self._metrics = metrics or NoopProxyMetrics()
        self._tls_factory = tls_factory
        self._on_refusal = on_refusal
        self._limits = limits or Limits()
        self._handlers: dict[str, Handler] = {}
        self._tls_handlers: dict[str, TLSHandler] = {}
        self._ctx: ssl.SSLContext | None = None
        self._native_ctx: _native.TLSContext | None = None
        self._listen_ctx: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._acceptor: _native.Acceptor | None = None
        self.admission = Admission(self._limits.max_unauthenticated,
                                   self._limits.max_unauthenticated_per_source,
                                   where="on the cluster port")
        self.conns: set[asyncio.Task[None]] = set()

    def route(self, alpn_name: str, handler: Handler) -> None:
        """Serve `alpn_name` on asyncio streams (the auth API, the web UI); "" serves TLS
        clients that negotiated no ALPN (browsers that offer none)."""
        self._handlers[alpn_name] = handler

    def route_tls(self, alpn_name: str, handler: TLSHandler) -> None:
        """Serve `alpn_name` on a native TLS stream, handshaken by the acceptor (the relay
        can take it over)."""
        self._tls_handlers[alpn_name] = handler

    def _protocols(self) -> list[str]:
        """The ALPN names we offer, `-ping` ones first: OpenSSL picks in the server's
        order, and a client offering both should get the framed one."""
        names = [n for n in (*self._tls_handlers, *self._handlers) if n]  # "": no ALPN
        return sorted(names, key=lambda n: not n.endswith(PING_SUFFIX))

    def reload_tls(self) -> None:
        """Build fresh contexts (new server cert / CAs): new connections use them, open
        ones keep theirs. The acceptor takes the new native context; the listening
        asyncio context's SNI callback hands each new handshake the current one."""
        tls = self._tls_factory()
        self._ctx = tls.ssl_context(self._protocols())
        self._native_ctx = tls.native_context(self._protocols())
        if self._acceptor is not None:
            self._acceptor.set_context(self._native_ctx)

    def _listening_context(self) -> ssl.SSLContext:
        ctx = self._tls_factory().ssl_context(self._protocols())

        def pick_current(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext
                         ) -> None:
            if self._ctx is not None and self._ctx is not ctx:
                sslobj.context = self._ctx

        ctx.sni_callback = pick_current  # type: ignore[assignment]
        return ctx

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self.reload_tls()
        self._listen_ctx = self._listening_context()
        family = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0][0]
        self._sock = socket.create_server((self._host, self._port), family=family,
                                          backlog=BACKLOG)
        self._sock.setblocking(False)
        lim = self._limits
        self._acceptor = _native.Acceptor(
            asyncio.get_running_loop(), self._sock, self._accepted, self._native_ctx,
            lim.handshake_timeout, route=list(self._tls_handlers),
            limits=(lim.max_unauthenticated, lim.max_unauthenticated_per_source))
        self.admission.attach(self._acceptor)
        acceptor = self._acceptor  # its stats outlive a drain: read that one at scrapes
        self._metrics.unauthenticated(lambda: float(acceptor.stats().handshaking))
        self._metrics.acceptor_refusals(lambda: _acceptor_refusals(acceptor.stats()))

    async def stop_accepting(self) -> None:
        """A drain begins: no new connections; open ones go on."""
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        if self._sock is not None:
            # the worker closes its dup of the socket a moment later: stop listening now
            # (on Linux this refuses new connections at once, for every dup)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
            self._sock.close()
            self._sock = None

    async def close(self, wait: float = 0) -> None:
        """Cancel what is still open, waiting up to `wait` s for it to wind up."""
        await self.stop_accepting()
        self.admission.close()
        for task in list(self.conns):
            task.cancel()
        if wait and self.conns:
            await asyncio.wait(self.conns, timeout=wait)

    def _accepted(self, acc: _native.Accepted) -> None:
        """The acceptor's one call per connection."""
        if acc.outcome == _native.ACC_CAPPED:
            self.admission.noticed(acc.source)
        elif acc.outcome == _native.ACC_REFUSED:
            self._refused(acc.peer, acc.reason, acc.alpn)
        elif acc.outcome == _native.ACC_TLS:
            self._metrics.handshake(LISTENER_CLUSTER, acc.ready_at - acc.accepted_at)
            self._spawn(self._serve_native(acc.conn, acc.peer, acc.alpn, acc.accepted_at))
        else:
            sock = socket.socket(fileno=acc.conn)
            sock.setblocking(False)  # what the loop's socket calls expect
            self._spawn(self._serve_raw(sock, acc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.conns.add(task)
        task.add_done_callback(self.conns.discard)

    def _refused(self, remote: str, reason: str, offered: tuple[str, ...],
                 selected: str | None = None, cert: bytes | None = None) -> None:
        log.info("TLS connection from %s refused: %s", remote, reason)
        self._metrics.refusal(alpn_protocol(selected, offered), metric_reason(reason))
        if self._on_refusal is None:
            return
        try:
            self._on_refusal(TLSRefusal(remote, reason, offered, selected or "", cert))
        except Exception:  # an audit that cannot be written must not stop the port
            log.exception("could not record the refusal of %s", remote)

    # -- the database protocols: handshaken by the acceptor ----------------------------

    async def _serve_native(self, stream: _native.TLSStream, remote: str,
                            offered: tuple[str, ...], accepted: float) -> None:
        ACCEPTED_AT.set(accepted)  # this connection's task: its handler reads it
        try:
            proto = stream.alpn()
            handler = self._tls_handlers.get(proto or "")
            if handler is None:
                self._refused(remote, f"no protocol this port serves (ALPN {proto!r})",
                              offered)
                return
            der = stream.peer_cert_der()
            try:
                caller = _caller(der)
            except ValueError as e:
                self._refused(remote, f"the client certificate carries no identity: {e}",
                              offered, proto, der)
                return
            try:
                await handler(stream, caller, remote)
            except Exception:
                log.exception("handler for %s (%s) failed", remote, proto)
        finally:
            stream.close()  # a no-op once a relay took the stream over

    # -- everything else: the auth API (stdlib TLS) and plaintext refusals --------------

    async def _serve_raw(self, sock: socket.socket, acc: _native.Accepted) -> None:
        """Counted against the caps until it authenticates or ends."""
        counted = [True]
        try:
            if acc.kind != _native.KIND_TLS:
                self._metrics.refusal(*_plaintext_refusal(acc.kind))
                await refuse_plaintext(sock, _first_bytes(sock, acc.kind), acc.peer)
                return
            streams = await self._handshake(sock, acc.peer, acc.alpn)
            if streams is not None:
                self._metrics.handshake(LISTENER_CLUSTER, time.monotonic() - acc.accepted_at)
                await self._dispatch(*streams, acc.peer, acc.alpn,
                                     lambda: self._release(acc.source, counted))
        finally:
            self._release(acc.source, counted)

    def _release(self, source: str, counted: list[bool]) -> None:
        if counted[0]:
            counted[0] = False
            self.admission.release(source)

    async def _handshake(self, sock: socket.socket, remote: str, offered: tuple[str, ...]
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            # the acceptor spent part of the handshake timeout already: a whole one more
            # at most (it bounds a stalled client, not a precise budget)
            return await server_streams(sock, self._listen_ctx,
                                        self._limits.handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            reason = handshake_refusal(e)
            if reason is None:  # not a refusal: a client that hung up or never finished
                log.info("TLS handshake with %s failed: %s", remote, e or "timeout")
            else:
                self._refused(remote, reason, offered)
            sock.close()
            return None

    async def _dispatch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        remote: str, offered: tuple[str, ...],
                        authenticated: Callable[[], None]) -> None:
        ssl_obj = writer.get_extra_info("ssl_object")
        proto = ssl_obj.selected_alpn_protocol() if ssl_obj else None
        # "" serves clients that offered no ALPN; one that offered only names we do not
        # serve is refused as before
        handler = self._handlers.get(proto or "") if proto or not offered else None
        if handler is None:
            self._refused(remote, f"no protocol this port serves (ALPN {proto!r})", offered)
            writer.close()
            return
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        try:
            caller = _caller(der)
        except ValueError as e:
            self._refused(remote, f"the client certificate carries no identity: {e}",
                          offered, proto, der)
            writer.close()
            return
        authenticated()
        try:
            await handler(reader, writer, caller, remote)
        except Exception:
            log.exception("handler for %s (%s) failed", remote, proto)
            writer.transport.abort()


def _plaintext_refusal(kind: str) -> tuple[str, str]:
    """(protocol, reason) of a client that did not start with TLS."""
    if kind == _native.KIND_HTTP:
        return "http", "plaintext"
    if kind == _native.KIND_GARBAGE or kind == _native.KIND_NEED_MORE:
        return "unknown", "other"
    return "postgres_plaintext", "plaintext"


def _acceptor_refusals(stats: _native.AcceptorStats) -> dict[tuple[str, str], int]:
    """What the acceptor refused and only counted: over the caps (closed at accept,
    nothing read) and silent until the handshake timeout."""
    return {("unknown", "admission_global"): stats.capped - stats.capped_source,
            ("unknown", "admission_source"): stats.capped_source,
            ("unknown", "timeout"): stats.handshake_timeouts}


def _first_bytes(sock: socket.socket, kind: str) -> _native.FirstBytes:
    """The classification of what a plaintext client sent (for its refusal's log line):
    the bytes are there already, unread."""
    try:
        return _native.classify(sock.recv(PEEK_SIZE, socket.MSG_PEEK))
    except OSError:
        return _native.FirstBytes(kind)


def handshake_refusal(e: BaseException) -> str | None:
    """Why a failed stdlib server handshake (the auth API) was a refusal, in OpenSSL's
    words (the acceptor words the database ALPNs' refusals alike), or None when the
    client only hung up or stalled: that is no security event."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None
    if isinstance(e, ssl.SSLError):
        return e.reason.lower().replace("_", " ") if e.reason else str(e)
    return None  # timeouts, resets, EOF


def _caller(der: bytes | None) -> Identity | None:
    """The identity in a verified client certificate (ValueError if it has none)."""
    if not der:
        return None
    return identity_from_der(der)


async def server_streams(sock: socket.socket, ctx: ssl.SSLContext | None = None,
                         handshake_timeout: float = HANDSHAKE_TIMEOUT
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted socket (TLS server handshake first when ctx is given)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    ready: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
    # a connected-callback makes the protocol server-side for a later inner start_tls
    protocol = asyncio.StreamReaderProtocol(reader, lambda _r, w: ready.set_result(w))
    await loop.connect_accepted_socket(lambda: protocol, sock, ssl=ctx,
                                       ssl_handshake_timeout=handshake_timeout if ctx else None)
    return reader, await ready
