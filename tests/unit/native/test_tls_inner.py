"""TLS inside TLS (TLSStream.wrap_inner), both builds: a PostgreSQL client's own TLS carried
in the local proxy's TLS, terminated at the cluster proxy and relayed like any TLS side.

The client here is the stdlib's SSLObject over memory BIOs (an independent TLS stack)
carried by the build's own outer client stream: it tells a close_notify from a bare end."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF, TLSError
from mwiproxy._native.tls_py import _memfile
from mwiproxy.relay.streams import MemoryTLSStream

from .relaykit import FAREWELL, open_fds, recv_all, run, tcp_pair
from .tlskit import plain_pair


class InnerClient(MemoryTLSStream):
    """The client's own TLS (stdlib) inside an outer client stream of the build under test,
    telling the peer's close_notify from a bare end."""

    def __init__(self, outer: Any, ctx: ssl.SSLContext) -> None:
        super().__init__(outer, ctx, server_side=False)
        self.close_notify = False  # the peer's end was a close_notify, not a bare end

    @property
    def outer(self) -> Any:
        return self.inner

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 20):
            self._obj.write(data[i:i + (1 << 20)])
            await self._flush()

    async def read(self, n: int = 1 << 20) -> bytes:
        while True:
            try:
                data = self._obj.read(n)
                self.close_notify |= not data  # the stdlib says b"" for a close_notify only
                return data
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLZeroReturnError:
                self.close_notify = True
                return b""
            except ssl.SSLEOFError:
                return b""

    async def read_all(self, limit: int | None = None) -> bytes:
        out = bytearray()
        while limit is None or len(out) < limit:
            chunk = await self.read()
            if not chunk:
                break
            out += chunk
        return bytes(out)

    async def shut(self) -> None:
        """Our close_notify (the read side stays open)."""
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        await self._flush()


async def inner_pair(mod: Any, pki: Any, client_cert: Any = "default",
                     verify: str = "optional") -> tuple[Any, InnerClient]:
    """(the proxy's inner server stream, the client's inner TLS), handshaken; the proxy
    reads the start of the ClientHello itself first, like after an SSLRequest."""
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    outer_server = mod.TLSStream(loop, pki.server_ctx(mod, verify="optional"), s.detach())
    outer_client = mod.TLSStream(loop, pki.client_ctx(mod, with_cert=False), c.detach(),
                                 server_hostname="proxy.mwi.test")
    await asyncio.gather(outer_server.handshake(), outer_client.handshake())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.ca.pem.decode())
    if client_cert is not None:
        issued = pki.client if client_cert == "default" else client_cert
        with _memfile(issued.cert_pem) as cert, _memfile(issued.key_pem) as key:
            ctx.load_cert_chain(cert, key)
    client = InnerClient(outer_client, ctx)
    hello = asyncio.ensure_future(client.handshake())
    initial = await outer_server.read(1 << 16)  # the ClientHello, read before the wrap
    server = outer_server.wrap_inner(pki.server_ctx(mod, verify=verify))
    try:
        await asyncio.gather(server.handshake(initial), hello)
    except BaseException:
        server.close()
        outer_client.close()
        raise
    return server, client


def test_inner_handshake_reports_the_client_certificate(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki)
        assert server.peer_cert_der() == pki.client.der
        assert server.version() == "TLSv1.3"
        await client.write(b"startup")
        assert await server.read(100) == b"startup"
        await server.write(b"ready")
        assert await client.read() == b"ready"
        await server.aclose()  # both close_notifys, inner first
        assert await client.read() == b"" and client.close_notify
        assert await client.outer.read(10) == b""  # the outer one followed
        client.outer.close()

    run(body)


def test_inner_handshake_without_a_client_certificate(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki, client_cert=None)
        assert server.peer_cert_der() is None
        server.close()
        client.outer.close()

    run(body)


def test_inner_handshake_refuses_a_foreign_client_certificate(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        with pytest.raises(TLSError, match="certificate verify failed"):
            await inner_pair(tls_mod, pki, client_cert=pki.stranger)

    run(body)


def test_the_outer_stream_is_handed_over(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        c, s = tcp_pair()
        outer = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
        with pytest.raises(ValueError, match="handshake"):
            outer.wrap_inner(pki.server_ctx(tls_mod))
        outer.close()
        c.close()
        server, client = await inner_pair(tls_mod, pki)
        server.close()
        client.outer.close()

    run(body)


async def _relayed(mod: Any, pki: Any, **kw: Any) -> tuple[Any, InnerClient, socket.socket,
                                                        asyncio.Future[str]]:
    loop = asyncio.get_running_loop()
    server, client = await inner_pair(mod, pki)
    plain, inner = plain_pair()
    done: asyncio.Future[str] = loop.create_future()
    relay = mod.Relay(loop, server, inner.detach(), on_done=done.set_result, **kw)
    relay.start()
    return relay, client, plain, done


def test_inner_tls_to_plain_is_byte_exact_both_ways(tls_mod: Any, pki: Any) -> None:
    up, down = random.randbytes(20 << 20), random.randbytes(20 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        relay, client, plain, done = await _relayed(tls_mod, pki)

        async def plain_send() -> None:
            await loop.sock_sendall(plain, down)
            plain.shutdown(socket.SHUT_WR)

        _, got_plain, got_tls, _ = await asyncio.gather(
            client.write(up), recv_all(loop, plain, len(up)),
            client.read_all(len(down) + 1), plain_send())
        assert hashlib.sha256(got_plain).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_tls).digest() == hashlib.sha256(down).digest()
        assert client.close_notify  # the plain side's FIN became a close_notify
        await client.shut()
        assert await recv_all(loop, plain) == b""
        assert await done == REASON_EOF
        assert relay.stats()[:2] == (len(up), len(down))
        client.outer.close()
        plain.close()
        tls_mod.close_engine(loop)
        assert open_fds() <= before

    run(body, timeout=120)


def test_half_close_through_inner_tls_keeps_the_other_way(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki)
        await client.write(b"query")
        await client.shut()  # the client's close_notify: the plain side gets a FIN
        assert await recv_all(loop, plain) == b"query"
        await loop.sock_sendall(plain, b"late reply")
        plain.shutdown(socket.SHUT_WR)
        assert await client.read_all() == b"late reply" and client.close_notify
        assert await done == REASON_EOF
        assert relay.stats()[:2] == (5, 10)
        client.outer.close()
        plain.close()

    run(body)


def test_farewell_goes_through_the_inner_tls(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki)
        await loop.sock_sendall(plain, b"1 row")
        assert await client.read() == b"1 row"
        relay.close(FAREWELL)
        assert await client.read_all() == FAREWELL and client.close_notify
        assert await done == REASON_CLOSED
        assert await recv_all(loop, plain) == b""
        client.outer.close()
        plain.close()

    run(body)


def test_a_context_offers_its_stdlib_twin_for_tls_inside_framing(tls_mod: Any, pki: Any) -> None:
    """Inside `-ping` framing the client's own TLS is run by the stdlib (MemoryTLSStream)
    with the same certificate and client-certificate rule as the native inner TLS."""
    ctx = pki.server_ctx(tls_mod, verify="optional").ssl_context
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
