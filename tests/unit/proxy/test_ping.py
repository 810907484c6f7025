"""The `-ping` framing: codec, the framed relay with keepalives, the cluster listener
preferring the framed name, and the local proxy falling back to the plain one."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mwiproxy import _native
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.identity.tlsctx import client_context
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.proxy.listener import ProxyListener, ServerTLS, TLSHandler
from mwiproxy.proxy.pingbridge import framed
from mwiproxy.relay.pipe import Pipe, PipeStats
from mwiproxy.relay.streams import ByteStream, FramedStream, SocketStream
from mwiproxy.wire import alpn, ping
from mwiproxy.wire import postgres as pg

HOST_CA = create_authority("host", "c")
USER_CA = create_authority("user", "c")
PG, PG_PING = alpn.POSTGRES, alpn.with_ping(alpn.POSTGRES)


def test_frame_and_keepalive_bytes():
    assert ping.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert ping.KEEPALIVE == b"\x00\x00\x00\x00"


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_deframer_recovers_payload_at_any_split(payloads, data):
    stream = b"".join(ping.KEEPALIVE + ping.frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    deframer, out, last = ping.Deframer(), b"", 0
    for cut in [*cuts, len(stream)]:
        out += deframer.feed(stream[last:cut])
        last = cut
    assert out == b"".join(payloads)
    assert not deframer.mid_frame
    assert deframer.keepalives == len(payloads) + sum(1 for p in payloads if not p)


def test_deframer_notices_a_truncated_stream():
    deframer = ping.Deframer()
    assert deframer.feed(ping.frame(b"hello")[:6]) == b"he"
    assert deframer.mid_frame


async def _pair() -> tuple[SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    return SocketStream(ours), theirs


async def _recv_until(sock: socket.socket, n: int) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert chunk, f"closed after {got!r}"
        got += chunk
    return got


def test_framed_pipe_frames_one_side_and_sends_keepalives_when_idle():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, peer_b) = await _pair(), await _pair()
        pipe = Pipe(FramedStream(a), b, keepalive=0.1)
        task = asyncio.ensure_future(pipe.run())
        await loop.sock_sendall(peer_a, ping.KEEPALIVE + ping.frame(b"select 1") + ping.KEEPALIVE)
        assert await _recv_until(peer_b, 8) == b"select 1"  # deframed, keepalives dropped
        await loop.sock_sendall(peer_b, b"row")
        assert await _recv_until(peer_a, 7) == ping.frame(b"row")
        await asyncio.sleep(0.35)  # idle: keepalives flow toward the framed side only
        idle = await _recv_until(peer_a, 8)
        assert set(idle) == {0} and len(idle) % 4 == 0
        peer_b.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer_b.recv(10)
        pipe.close()
        await asyncio.wait_for(task, 5)
        assert pipe.stats.bytes_a_to_b == 8 and pipe.stats.bytes_b_to_a == 3
        assert pipe.stats.native  # the relay frames and keeps alive: no Python copy

    asyncio.run(main())


def test_framed_pipe_treats_a_truncated_frame_as_a_reset():
    async def main() -> str:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, _peer_b) = await _pair(), await _pair()
        task = asyncio.ensure_future(Pipe(FramedStream(a), b).run())
        await loop.sock_sendall(peer_a, ping.frame(b"hello")[:6])
        peer_a.shutdown(socket.SHUT_WR)
        return (await asyncio.wait_for(task, 5)).reason

    assert asyncio.run(main()) == "reset_a"


# -- the cluster listener and a framed handler ---------------------------------------


def _server_tls() -> ServerTLS:
    key = generate_private_key()
    cert = HOST_CA.sign_server("localhost", ["localhost"], key.public_key(),
                               dt.timedelta(hours=1))
    return ServerTLS(cert_pem(cert), private_key_pem(key), USER_CA.cert_pem)


def _echo(interval: float | None = None, stats: list[PipeStats] | None = None) -> TLSHandler:
    async def serve(stream: ByteStream, _caller: Identity | None, _remote: str) -> None:
        """Answers the first chunk itself (setup), then relays to an upper-casing peer."""
        await stream.write((await stream.read(65536)).upper())
        ours, theirs = socket.socketpair()
        upper = asyncio.ensure_future(_upper(theirs))
        result = await Pipe(stream, SocketStream(ours), keepalive=interval).run()
        await upper
        if stats is not None:
            stats.append(result)

    return serve


async def _upper(sock: socket.socket) -> None:
    peer = SocketStream(sock)
    while data := await peer.read(65536):
        await peer.write(data.upper())
    peer.close()


async def _cluster(with_ping: bool, interval: float = 30.0) -> ProxyListener:
    listener = ProxyListener("127.0.0.1", 0, _server_tls)
    listener.route_tls(PG, _echo())
    if with_ping:
        listener.route_tls(PG_PING, framed(_echo(interval)))
    await listener.start()
    return listener


async def _dial(listener: ProxyListener, offer: list[str]
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    ctx = client_context(HOST_CA.cert_pem, alpn=offer)
    host, port = listener.address
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                   server_hostname="localhost")
    return reader, writer, writer.get_extra_info("ssl_object").selected_alpn_protocol()


def test_listener_prefers_the_ping_name_and_keeps_idle_connections_alive():
    async def main() -> None:
        listener = await _cluster(with_ping=True, interval=0.1)
        reader, writer, chosen = await _dial(listener, [PG_PING, PG])
        assert chosen == PG_PING
        writer.write(ping.frame(b"hello"))
        deframer, got = ping.Deframer(), b""
        while len(got) < 5:
            got += deframer.feed(await asyncio.wait_for(reader.read(100), 5))
        assert got == b"HELLO"
        await asyncio.sleep(0.35)
        assert deframer.feed(await asyncio.wait_for(reader.read(100), 5)) == b""
        assert deframer.keepalives >= 2
        writer.close()
        _, _, plain = await _dial(listener, [PG])
        assert plain == PG  # a client that does not offer -ping is served unframed
        await listener.close()

    asyncio.run(main())


def test_a_framed_tunnel_session_is_relayed_natively_with_keepalives_from_the_relay():
    """The cluster's framed handler: the whole session leaves Python (the relay takes the
    FramedStream's TLS stream and deframer state over), and an idle session gets its
    keepalives from the relay, not from a Python task."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats: list[PipeStats] = []
        listener = ProxyListener("127.0.0.1", 0, _server_tls)
        listener.route_tls(PG_PING, framed(_echo(0.05, stats)))
        await listener.start()
        reader, writer, chosen = await _dial(listener, [PG_PING])
        assert chosen == PG_PING
        # the setup reads one chunk; the header of the next frame comes in two pieces,
        # the first with the setup's chunk: the relay resumes mid-header
        nxt = ping.frame(b"relayed")
        writer.write(ping.frame(b"setup") + nxt[:2])
        deframer, got = ping.Deframer(), b""
        while len(got) < 5:
            got += deframer.feed(await asyncio.wait_for(reader.read(100), 5))
        assert got == b"SETUP"
        writer.write(nxt[2:])
        got = b""
        while len(got) < 7:
            got += deframer.feed(await asyncio.wait_for(reader.read(100), 5))
        assert got == b"RELAYED"
        before = deframer.keepalives
        while deframer.keepalives < before + 3:  # idle: keepalives, from the relay
            assert deframer.feed(await asyncio.wait_for(reader.read(100), 5)) == b""
        if _native.NATIVE:
            from mwiproxy._native import _relay
            # a worker holds it (relays are spread over the loop's engines: any of them)
            assert sum(e.relays_running for e in _relay.engines_for(loop)) == 1
        writer.close()
        while not stats:
            await asyncio.sleep(0.01)
        assert stats[0].native and stats[0].bytes_a_to_b == 7 and stats[0].bytes_b_to_a == 7
        await listener.close()

    asyncio.run(main())


# -- the local proxy offers -ping first and falls back -------------------------------


def _credentials() -> tuple[bytes, bytes, bytes]:
    key = generate_private_key()
    cert = USER_CA.sign_identity(Identity(user="bot-x", bot_name="x"), key.public_key(),
                                 dt.timedelta(minutes=5))
    return cert_pem(cert), private_key_pem(key), HOST_CA.cert_pem


@pytest.mark.parametrize(("cluster_has_ping", "offer_ping"),
                         [(True, True), (False, True), (True, False)])
def test_local_proxy_offers_ping_when_asked_and_falls_back(cluster_has_ping, offer_ping):
    async def main() -> bytes:
        cluster = await _cluster(with_ping=cluster_has_ping)
        creds = _credentials()
        local = LocalProxy(listen="127.0.0.1:0", proxy_addr="{}:{}".format(*cluster.address),
                           service="db", credentials=lambda: creds, tunnel=False,
                           offer_ping=offer_ping)
        assert local.alpn_offer == ([PG_PING, PG] if offer_ping else [PG])
        await local.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", local.port)
        startup = pg.build_startup({"user": "alice"})
        writer.write(startup)
        got = await asyncio.wait_for(reader.readexactly(len(startup)), 5)
        writer.write(b"more")
        got += await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        await local.close()
        await cluster.close()
        return got

    startup = pg.build_startup({"user": "alice"})
    assert asyncio.run(main()) == startup.upper() + b"MORE"


@pytest.mark.parametrize(("flags", "offered"), [((), True), (("--ping",), True),
                                                 (("--no-ping",), False)])
def test_the_local_proxy_offers_ping_by_default(flags, offered):
    """As Teleport's local proxy does: framed first unless told not to (the tunnel
    services of `mwibot start` build LocalProxy with its default)."""
    from mwiproxy.cli.mwibot import build_parser

    args = build_parser().parse_args(["proxy", "--proxy=127.0.0.1:3080",
                                      "--destination-dir=/tmp/x", "db", *flags, "svc"])
    assert args.ping is offered
    assert inspect.signature(LocalProxy).parameters["offer_ping"].default is True
