"""The relay (always `_native.Relay`, the compiled core or its pure twin): counters,
half-close, close() (with its farewell) and idle timeout."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest

from mwiproxy import _native
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.relay.pipe import Pipe
from mwiproxy.relay.streams import SocketStream


async def _pair() -> tuple[SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    return SocketStream(ours), theirs


async def _exchange() -> tuple[Pipe, bytes, bytes]:
    loop = asyncio.get_running_loop()
    (a, peer_a), (b, peer_b) = await _pair(), await _pair()
    pipe = Pipe(a, b)
    task = asyncio.ensure_future(pipe.run())
    payload = b"x" * 3_000_000
    send = asyncio.ensure_future(loop.sock_sendall(peer_a, payload))
    got = bytearray()
    while len(got) < len(payload):
        got += await loop.sock_recv(peer_b, 1 << 20)
    await send
    await loop.sock_sendall(peer_b, b"pong")
    back = await loop.sock_recv(peer_a, 10)
    peer_a.shutdown(socket.SHUT_WR)
    assert await loop.sock_recv(peer_b, 10) == b""  # the half-close went through
    peer_b.close()
    await asyncio.wait_for(task, 5)
    peer_a.close()
    assert pipe.stats.native
    return pipe, bytes(got), back


def test_relay_both_ways_with_counters():
    pipe, got, back = asyncio.run(_exchange())
    assert got == b"x" * 3_000_000 and back == b"pong"
    assert pipe.stats.bytes_a_to_b == 3_000_000 and pipe.stats.bytes_b_to_a == 4


def test_live_bytes_while_running_and_after():
    """What the web UI's Sessions page shows: the counts so far, then the final ones."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, peer_b) = await _pair(), await _pair()
        pipe = Pipe(a, b)
        assert pipe.live_bytes() == (0, 0)  # not started
        task = asyncio.ensure_future(pipe.run())
        await loop.sock_sendall(peer_a, b"hello")
        assert await loop.sock_recv(peer_b, 10) == b"hello"
        for _ in range(100):  # the worker counts as it delivers
            if pipe.live_bytes() == (5, 0):
                break
            await asyncio.sleep(0.02)
        assert pipe.live_bytes() == (5, 0)
        pipe.close("locked")
        await asyncio.wait_for(task, 5)
        assert pipe.live_bytes() == (5, 0)
        peer_a.close()
        peer_b.close()

    asyncio.run(main())


def test_close_cuts_both_sides():
    async def main() -> str:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, peer_b) = await _pair(), await _pair()
        pipe = Pipe(a, b)
        task = asyncio.ensure_future(pipe.run())
        await asyncio.sleep(0.05)
        pipe.close("locked")
        stats = await asyncio.wait_for(task, 5)
        assert await loop.sock_recv(peer_a, 10) == b""
        assert await loop.sock_recv(peer_b, 10) == b""
        return stats.reason

    assert asyncio.run(main()) == "locked"


@pytest.mark.parametrize("before_run", [False, True], ids=["running", "before-run"])
def test_close_with_a_farewell_tells_side_a_why(before_run):
    farewell = b"E\x00\x00\x00\x0bMlocked\x00\x00"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, peer_b) = await _pair(), await _pair()
        pipe = Pipe(a, b)
        if before_run:
            pipe.close("locked", farewell_to_a=farewell)
        task = asyncio.ensure_future(pipe.run())
        if not before_run:
            await loop.sock_sendall(peer_b, b"ready")
            assert await loop.sock_recv(peer_a, 10) == b"ready"
            pipe.close("locked", farewell_to_a=farewell)
        stats = await asyncio.wait_for(task, 5)
        assert stats.reason == "locked" and stats.native
        got = b""
        while chunk := await loop.sock_recv(peer_a, 100):
            got += chunk
        assert got == farewell
        assert await loop.sock_recv(peer_b, 10) == b""
        peer_a.close()
        peer_b.close()

    asyncio.run(main())


def test_idle_timeout():
    async def main() -> str:
        (a, _pa), (b, _pb) = await _pair(), await _pair()
        stats = await asyncio.wait_for(Pipe(a, b, idle_timeout=0.2).run(), 5)
        return stats.reason

    assert asyncio.run(main()) == _native.REASON_IDLE_TIMEOUT


# -- native TLS ends -------------------------------------------------------------------

_HOST_CA = create_authority("host", "c")


def _tls_contexts() -> tuple[_native.TLSContext, _native.TLSContext]:
    key = generate_private_key()
    cert = _HOST_CA.sign_server("localhost", ["localhost"], key.public_key(),
                                dt.timedelta(hours=1))
    server = _native.TLSContext(True, cert_pem(cert), private_key_pem(key),
                                verify=_native.VERIFY_NONE)
    client = _native.TLSContext(False, ca_pem=_HOST_CA.cert_pem)
    return server, client


def test_a_tls_end_is_relayed_natively_after_the_setup_exchange():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server_ctx, client_ctx = _tls_contexts()
        ours, theirs = socket.socketpair()
        tls = _native.TLSStream(loop, server_ctx, ours.detach())
        peer = _native.TLSStream(loop, client_ctx, theirs.detach(), server_hostname="localhost")
        await asyncio.gather(tls.handshake(), peer.handshake())
        await peer.write(b"startup")
        assert await tls.read() == b"startup"  # the setup phase reads the stream itself
        plain, peer_b = await _pair()
        pipe = Pipe(tls, plain)
        task = asyncio.ensure_future(pipe.run())
        await peer.write(b"q" * 100_000)
        got = b""
        while len(got) < 100_000:
            got += await loop.sock_recv(peer_b, 65536)
        await loop.sock_sendall(peer_b, b"row")
        assert await peer.read() == b"row"
        pipe.close("locked", farewell_to_a=b"locked, bye")
        stats = await asyncio.wait_for(task, 5)
        assert stats.native and stats.reason == "locked"
        assert (stats.bytes_a_to_b, stats.bytes_b_to_a) == (100_000, 3)
        assert await peer.read() == b"locked, bye"  # through TLS, then close_notify
        assert await peer.read() == b""
        peer.close()
        peer_b.close()

    asyncio.run(main())


def test_tls_inside_tls_is_relayed_natively_to_a_tls_end():
    """Non-tunnel mode at the cluster proxy: the client's own TLS inside the outer TLS
    (TLSStream.wrap_inner) on side a, the database's TLS on side b: no Python copy."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server_ctx, client_ctx = _tls_contexts()

        async def tls_pair() -> tuple[_native.TLSStream, _native.TLSStream]:
            ours, theirs = socket.socketpair()
            tls = _native.TLSStream(loop, server_ctx, ours.detach())
            peer = _native.TLSStream(loop, client_ctx, theirs.detach(),
                                     server_hostname="localhost")
            await asyncio.gather(tls.handshake(), peer.handshake())
            return tls, peer

        outer, client_outer = await tls_pair()
        await client_outer.write(b"SSLRequest")
        assert await outer.read() == b"SSLRequest"
        inner = outer.wrap_inner(server_ctx)
        client = client_outer.wrap_inner(client_ctx, server_hostname="localhost")
        await asyncio.gather(inner.handshake(), client.handshake())
        db, db_peer = await tls_pair()
        pipe = Pipe(inner, db)
        task = asyncio.ensure_future(pipe.run())
        await client.write(b"q" * 300_000)
        got = b""
        while len(got) < 300_000:
            got += await db_peer.read()
        await db_peer.write(b"row")
        assert await client.read() == b"row"
        pipe.close("locked", farewell_to_a=b"locked, bye")
        stats = await asyncio.wait_for(task, 5)
        assert stats.native and stats.reason == "locked"
        assert (stats.bytes_a_to_b, stats.bytes_b_to_a) == (300_000, 3)
        assert await client.read() == b"locked, bye"  # through both TLS layers
        assert await client.read() == b""  # the inner close_notify
        client.close()
        db_peer.close()

    asyncio.run(main())
