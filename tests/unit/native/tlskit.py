"""Helpers for the TLS tests: a PKI made at test time, handshaken stream pairs, and a
blocking stdlib-ssl client (an independent TLS stack) run in a thread."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from mwiproxy._native.tls_py import _memfile

from .pki import CA
from .relaykit import tcp_pair


class Pki:
    def __init__(self) -> None:
        self.ca = CA()
        self.other_ca = CA("another CA")
        self.server = self.ca.issue("proxy", dns=["proxy.mwi.test"])
        self.server2 = self.ca.issue("proxy-renewed", dns=["proxy.mwi.test"])
        self.client = self.ca.issue("bot:ci")
        self.expired = self.ca.issue("proxy-expired", dns=["proxy.mwi.test"], expired=True)
        self.stranger = self.other_ca.issue("stranger", dns=["proxy.mwi.test"])

    def server_ctx(self, mod: Any, issued: Any = None, verify: str = "required",
                   alpn: list[str] | None = None) -> Any:
        issued = issued or self.server
        return mod.TLSContext(True, issued.cert_pem, issued.key_pem, self.ca.pem, verify, alpn)

    def client_ctx(self, mod: Any, issued: Any = None, ca_pem: bytes | None = None,
                   verify: str = "required", alpn: list[str] | None = None,
                   with_cert: bool = True) -> Any:
        issued = issued or self.client
        return mod.TLSContext(False, issued.cert_pem if with_cert else None,
                              issued.key_pem if with_cert else None, ca_pem or self.ca.pem,
                              verify, alpn)

    def stdlib_client(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=self.ca.pem.decode())
        with _memfile(self.client.cert_pem) as cert, _memfile(self.client.key_pem) as key:
            ctx.load_cert_chain(cert, key)
        return ctx


async def handshaken(mod: Any, server_ctx: Any, client_ctx: Any,
                     server_name: str | None = "proxy.mwi.test") -> tuple[Any, Any]:
    """(server stream, client stream), handshaken over one loopback TCP connection."""
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    server = mod.TLSStream(loop, server_ctx, s.detach())
    client = mod.TLSStream(loop, client_ctx, c.detach(), server_hostname=server_name)
    await asyncio.gather(server.handshake(), client.handshake())
    return server, client


async def failed_handshake(mod: Any, server_ctx: Any, client_ctx: Any) -> tuple[Any, Any]:
    """Both sides' outcomes (an exception, or None) when a handshake should fail."""
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    server = mod.TLSStream(loop, server_ctx, s.detach())
    client = mod.TLSStream(loop, client_ctx, c.detach(), server_hostname="proxy.mwi.test")

    async def client_side() -> None:
        await client.handshake()
        await client.read(10)  # TLS 1.3: a client learns of its rejection on first read

    async def server_side() -> None:
        await server.handshake()
        await server.write(b"x")

    out = await asyncio.gather(server_side(), client_side(), return_exceptions=True)
    server.close()
    client.close()
    return out[0], out[1]


def plain_pair() -> tuple[socket.socket, socket.socket]:
    """(end the test drives, end given to the relay)."""
    outer, inner = tcp_pair()
    outer.setblocking(False)
    return outer, inner
