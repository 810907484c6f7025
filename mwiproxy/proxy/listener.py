"""The cluster proxy's single TLS port: accept, handshake, route by ALPN.

Handlers are registered per ALPN protocol name. The client certificate, when offered, is
verified against the user CA during the handshake and decoded into an Identity before a
handler sees the connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from cryptography import x509

from mwiproxy.identity.certs import Identity, identity_from_certificate

log = logging.getLogger("mwiproxy.proxy")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Identity | None, str],
                   Awaitable[None]]
HANDSHAKE_TIMEOUT = 10.0


class ProxyListener:
    def __init__(self, host: str, port: int, ctx_factory: Callable[[list[str]], ssl.SSLContext]
                 ) -> None:
        self._host = host
        self._port = port
        self._ctx_factory = ctx_factory
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._ctx: ssl.SSLContext | None = None

    def route(self, alpn_name: str, handler: Handler) -> None:
        self._handlers[alpn_name] = handler

    def reload_tls(self) -> None:
        """Build a fresh context (new server cert / CAs): new connections use it, open ones
        keep theirs. The listening context's SNI callback hands each new handshake to
        whichever context is current."""
        self._ctx = self._ctx_factory(list(self._handlers))

    def _listening_context(self) -> ssl.SSLContext:
        ctx = self._ctx_factory(list(self._handlers))

        def pick_current(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext
                         ) -> None:
            if self._ctx is not None and self._ctx is not ctx:
                sslobj.context = self._ctx

        ctx.sni_callback = pick_current  # type: ignore[assignment]
        return ctx

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self.reload_tls()
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, ssl=self._listening_context(),
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT, reuse_address=True, backlog=1024)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        ssl_obj = writer.get_extra_info("ssl_object")
        proto = ssl_obj.selected_alpn_protocol() if ssl_obj else None
        handler = self._handlers.get(proto or "")
        if handler is None:
            log.info("connection from %s offered no protocol we serve (ALPN %r)", remote, proto)
            writer.close()
            return
        caller = None
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        if der:
            try:
                caller = identity_from_certificate(x509.load_der_x509_certificate(der))
            except ValueError as e:
                log.info("client certificate from %s carries no identity: %s", remote, e)
                writer.close()
                return
        await handler(reader, writer, caller, remote)
