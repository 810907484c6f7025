"""TLS inside TLS (TLSStream.wrap_inner), both builds: a PostgreSQL client's own TLS carried
in the local proxy's TLS, terminated at the cluster proxy and relayed like any TLS side.

The client here is the stdlib's SSLObject over memory BIOs (an independent TLS stack)
carried by the build's own outer client stream: it tells a close_notify from a bare end."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF, Framing, TLSError

from .innerkit import InnerClient, inner_pair
from .relaykit import FAREWELL, open_fds, recv_all, run, tcp_pair
from .tlskit import plain_pair


@pytest.fixture(params=[False, True], ids=["unframed", "framed"])
def framed(request: pytest.FixtureRequest) -> bool:
    """Whether `-ping` framing sits between the two TLS layers (non-tunnel `-ping`)."""
    return bool(request.param)


def test_inner_handshake_reports_the_client_certificate(tls_mod: Any, pki: Any, framed: bool) -> None:
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki, framed=framed)
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


def test_inner_handshake_without_a_client_certificate(tls_mod: Any, pki: Any, framed: bool) -> None:
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki, client_cert=None, framed=framed)
        assert server.peer_cert_der() is None
        server.close()
        client.outer.close()

    run(body)


def test_inner_handshake_refuses_a_foreign_client_certificate(tls_mod: Any, pki: Any, framed: bool) -> None:
    async def body() -> None:
        with pytest.raises(TLSError, match="certificate verify failed"):
            await inner_pair(tls_mod, pki, client_cert=pki.stranger, framed=framed)

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


async def _relayed(mod: Any, pki: Any, framed: bool = False, **kw: Any
                   ) -> tuple[Any, InnerClient, socket.socket, asyncio.Future[str]]:
    loop = asyncio.get_running_loop()
    server, client = await inner_pair(mod, pki, framed=framed)
    if framed:
        kw.setdefault("framed_a", Framing(None))
    plain, inner = plain_pair()
    done: asyncio.Future[str] = loop.create_future()
    relay = mod.Relay(loop, server, inner.detach(), on_done=done.set_result, **kw)
    relay.start()
    return relay, client, plain, done


def test_inner_tls_to_plain_is_byte_exact_both_ways(tls_mod: Any, pki: Any, framed: bool) -> None:
    up, down = random.randbytes(20 << 20), random.randbytes(20 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        relay, client, plain, done = await _relayed(tls_mod, pki, framed)

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


def test_half_close_through_inner_tls_keeps_the_other_way(tls_mod: Any, pki: Any, framed: bool) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki, framed)
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


def test_farewell_goes_through_the_inner_tls(tls_mod: Any, pki: Any, framed: bool) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki, framed)
        await loop.sock_sendall(plain, b"1 row")
        assert await client.read() == b"1 row"
        relay.close(FAREWELL)
        assert await client.read_all() == FAREWELL and client.close_notify
        assert await done == REASON_CLOSED
        assert await recv_all(loop, plain) == b""
        client.outer.close()
        plain.close()

    run(body)
