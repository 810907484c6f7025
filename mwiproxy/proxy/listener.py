"""The cluster proxy's single TLS port: accept, peek, handshake, route by ALPN.

The first bytes of each connection are peeked (not read) and classified by the native
parser. TLS goes on to the handshake; a client that speaks PostgreSQL or HTTP in the
clear is told, in its own protocol, that this port needs TLS; anything else is closed.

Handlers are registered per ALPN protocol name. The client certificate, when offered, is
verified against the user CA during the handshake and decoded into an Identity before a
handler sees the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509

from mwiproxy import _native
from mwiproxy.identity.certs import Identity, identity_from_certificate
from mwiproxy.identity.tlsctx import server_context
from mwiproxy.proxy.plaintext import refuse as refuse_plaintext
from mwiproxy.relay.listen import AcceptLoop
from mwiproxy.relay.streams import ByteStream, set_nodelay
from mwiproxy.wire.alpn import PING_SUFFIX

log = logging.getLogger("mwiproxy.proxy")

# asyncio streams: the auth API; a native TLS stream: the database protocols
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Identity | None, str],
                   Awaitable[None]]
TLSHandler = Callable[[ByteStream, Identity | None, str], Awaitable[None]]
HANDSHAKE_TIMEOUT = 10.0
PEEK_SIZE = 4096
STREAM_LIMIT = 1 << 20


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
    def __init__(self, host: str, port: int, tls_factory: Callable[[], ServerTLS]) -> None:
        self._tls_factory = tls_factory
        self._handlers: dict[str, Handler] = {}
        self._tls_handlers: dict[str, TLSHandler] = {}
        self._ctx: ssl.SSLContext | None = None
        self._native_ctx: _native.TLSContext | None = None
        self._listen_ctx: ssl.SSLContext | None = None
        self._acceptor = AcceptLoop(host, port, self._serve)

    def route(self, alpn_name: str, handler: Handler) -> None:
        """Serve `alpn_name` on asyncio streams (the auth API)."""
        self._handlers[alpn_name] = handler

    def route_tls(self, alpn_name: str, handler: TLSHandler) -> None:
        """Serve `alpn_name` on a native TLS stream (the relay can take it over)."""
        self._tls_handlers[alpn_name] = handler

    def _protocols(self) -> list[str]:
        """The ALPN names we offer, `-ping` ones first: OpenSSL picks in the server's
        order, and a client offering both should get the framed one."""
        names = [*self._tls_handlers, *self._handlers]
        return sorted(names, key=lambda n: not n.endswith(PING_SUFFIX))

    def reload_tls(self) -> None:
        """Build fresh contexts (new server cert / CAs): new connections use them, open
        ones keep theirs. The listening asyncio context's SNI callback hands each new
        handshake to whichever context is current."""
        tls = self._tls_factory()
        self._ctx = tls.ssl_context(self._protocols())
        self._native_ctx = tls.native_context(self._protocols())

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
        return self._acceptor.address

    async def start(self) -> None:
        self.reload_tls()
        self._listen_ctx = self._listening_context()
        self._acceptor.start()

    async def close(self) -> None:
        await self._acceptor.close()

    async def _serve(self, sock: socket.socket, remote: str) -> None:
        try:
            first = await asyncio.wait_for(peek_first_bytes(sock), HANDSHAKE_TIMEOUT)
        except (TimeoutError, OSError):
            sock.close()
            return
        if first.kind != _native.KIND_TLS:
            await refuse_plaintext(sock, first, remote)
        elif any(name in self._tls_handlers for name in first.alpn):
            await self._serve_native(sock, remote)
        else:
            streams = await self._handshake(sock, remote)
            if streams is not None:
                await self._dispatch(*streams, remote)

    # -- the database protocols: native TLS --------------------------------------------

    async def _serve_native(self, sock: socket.socket, remote: str) -> None:
        assert self._native_ctx is not None
        set_nodelay(sock)
        stream = _native.TLSStream(asyncio.get_running_loop(), self._native_ctx,
                                   sock.detach())
        try:
            await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as e:  # TLSError is an OSError; the alert is sent
            log.info("TLS handshake with %s failed: %s", remote, e or "timeout")
            stream.close()
            return
        try:
            await self._dispatch_native(stream, remote)
        finally:
            stream.close()  # a no-op once a relay took the stream over

    async def _dispatch_native(self, stream: _native.TLSStream, remote: str) -> None:
        proto = stream.alpn()
        handler = self._tls_handlers.get(proto or "")
        if handler is None:
            log.info("connection from %s offered no protocol we serve (ALPN %r)", remote, proto)
            return
        try:
            caller = _caller(stream.peer_cert_der())
        except ValueError as e:
            log.info("client certificate from %s carries no identity: %s", remote, e)
            return
        try:
            await handler(stream, caller, remote)
        except Exception:
            log.exception("handler for %s (%s) failed", remote, proto)

    # -- the auth API: asyncio streams -------------------------------------------------

    async def _handshake(self, sock: socket.socket, remote: str
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await server_streams(sock, self._listen_ctx)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            log.info("TLS handshake with %s failed: %s", remote, e)
            sock.close()
            return None

    async def _dispatch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        remote: str) -> None:
        ssl_obj = writer.get_extra_info("ssl_object")
        proto = ssl_obj.selected_alpn_protocol() if ssl_obj else None
        handler = self._handlers.get(proto or "")
        if handler is None:
            log.info("connection from %s offered no protocol we serve (ALPN %r)", remote, proto)
            writer.close()
            return
        try:
            caller = _caller(ssl_obj.getpeercert(binary_form=True) if ssl_obj else None)
        except ValueError as e:
            log.info("client certificate from %s carries no identity: %s", remote, e)
            writer.close()
            return
        try:
            await handler(reader, writer, caller, remote)
        except Exception:
            log.exception("handler for %s (%s) failed", remote, proto)
            writer.transport.abort()


def _caller(der: bytes | None) -> Identity | None:
    """The identity in a verified client certificate (ValueError if it has none)."""
    if not der:
        return None
    return identity_from_certificate(x509.load_der_x509_certificate(der))


async def server_streams(sock: socket.socket, ctx: ssl.SSLContext | None = None
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted socket (TLS server handshake first when ctx is given)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    ready: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
    # a connected-callback makes the protocol server-side for a later inner start_tls
    protocol = asyncio.StreamReaderProtocol(reader, lambda _r, w: ready.set_result(w))
    await loop.connect_accepted_socket(lambda: protocol, sock, ssl=ctx,
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ctx else None)
    return reader, await ready


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


async def peek_first_bytes(sock: socket.socket) -> _native.FirstBytes:
    """Classify what the client sent first without taking it off the socket."""
    seen = -1
    while True:
        await _readable(sock)
        data = sock.recv(PEEK_SIZE, socket.MSG_PEEK)
        first = _native.classify(data)
        if not data or first.kind != _native.KIND_NEED_MORE or len(data) >= PEEK_SIZE:
            return first
        if len(data) == seen:  # more is on its way: wait for it, do not spin
            await asyncio.sleep(0.005)
        seen = len(data)
