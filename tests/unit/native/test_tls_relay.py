"""TLS<->plain and TLS<->TLS relays, both builds: bytes, half-close, resets, timeouts,
context swap, scale, no leaked fds."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import random
import socket
import ssl
import struct
from typing import Any

from mwiproxy._native import REASON_CLOSED, REASON_EOF, REASON_IDLE_TIMEOUT, REASON_RESET_A

from .relaykit import FAREWELL, farewell_split, flood, open_fds, recv_all, run, tcp_pair
from .tlskit import handshaken, plain_pair


class TLSJoined:
    """TLS client -> [server stream | relay | plain] -> `plain`, the end the test drives."""

    def __init__(self) -> None:
        self.client: Any = None
        self.plain: socket.socket | None = None
        self.relay: Any = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, mod: Any, pki: Any, server_ctx: Any = None, **kw: Any) -> TLSJoined:
        j = cls()
        loop = asyncio.get_running_loop()
        server, j.client = await handshaken(mod, server_ctx or pki.server_ctx(mod),
                                            pki.client_ctx(mod))
        j.plain, inner = plain_pair()
        j.relay = mod.Relay(loop, server, inner.detach(), on_done=j._on_done, **kw)
        j.relay.start()
        return j

    def _on_done(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


async def tls_recv_all(stream: Any, limit: int) -> bytes:
    out = bytearray()
    while len(out) < limit:
        chunk = await stream.read(1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def tls_send(stream: Any, data: bytes) -> None:
    for i in range(0, len(data), 1 << 20):
        await stream.write(data[i:i + (1 << 20)])


def test_tls_to_plain_is_byte_exact_both_ways(tls_mod: Any, pki: Any) -> None:
    up, down = random.randbytes(24 << 20), random.randbytes(8 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        j = await TLSJoined.open(tls_mod, pki)
        assert j.plain is not None

        async def plain_send() -> None:
            assert j.plain is not None
            await loop.sock_sendall(j.plain, down)
            j.plain.shutdown(socket.SHUT_WR)

        _, got_plain, got_tls, _ = await asyncio.gather(
            tls_send(j.client, up), recv_all(loop, j.plain, len(up)),
            tls_recv_all(j.client, len(down) + 1), plain_send())
        assert hashlib.sha256(got_plain).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_tls).digest() == hashlib.sha256(down).digest()
        await j.client.aclose()  # close_notify: the relay ends cleanly
        assert await recv_all(loop, j.plain) == b""
        assert await j.done == REASON_EOF
        assert j.relay.stats()[:2] == (len(up), len(down))
        j.plain.close()
        tls_mod.close_engine(loop)  # the engine's own fds (epoll, eventfds, pooled pipes)
        assert open_fds() <= before  # no new fds (others may be closed by GC meanwhile)

    run(body)


async def stdlib_client_relay(tls_mod: Any, pki: Any) -> tuple[Any, socket.socket, Any,
                                                                asyncio.Future[str]]:
    """A blocking stdlib TLS client (an independent TLS stack) ↔ the relay's TLS side,
    relayed to a plain socket: (client, plain end, started relay, its done future)."""
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
    client = pki.stdlib_client().wrap_socket(c, server_hostname="proxy.mwi.test",
                                              do_handshake_on_connect=False)
    client_hs = asyncio.ensure_future(asyncio.to_thread(client.do_handshake))
    await server.handshake()
    await client_hs
    plain, inner = plain_pair()
    done: asyncio.Future[str] = loop.create_future()
    relay = tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result)
    relay.start()
    return client, plain, relay, done


def test_half_close_sends_close_notify_and_the_other_way_flows(tls_mod: Any, pki: Any) -> None:
    """Driven by the stdlib's blocking ssl client: an independent TLS stack that tells a
    close_notify (recv returns b"") from a bare FIN (SSLEOFError)."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        client, plain, relay, done = await stdlib_client_relay(tls_mod, pki)

        def tls_peer() -> bytes:
            got = b""
            while chunk := client.recv(100):  # b"" only on close_notify
                got += chunk
            client.sendall(b"late reply")
            client.unwrap()
            client.close()
            return got

        peer = asyncio.ensure_future(asyncio.to_thread(tls_peer))
        await loop.sock_sendall(plain, b"result rows")
        plain.shutdown(socket.SHUT_WR)
        assert await peer == b"result rows"
        assert await recv_all(loop, plain) == b"late reply"
        assert await done == REASON_EOF
        plain.close()

    run(body)


def test_peer_reset_is_reported_and_passed_on(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = await TLSJoined.open(tls_mod, pki)
        assert j.plain is not None
        await j.client.write(b"hi")
        assert await recv_all(loop, j.plain, 2) == b"hi"
        sock = socket.socket(fileno=j.client.fileno)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.detach()
        j.client.close()
        assert await j.done == REASON_RESET_A
        try:
            rest = await recv_all(loop, j.plain)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        j.plain.close()

    run(body)


def test_idle_timeout(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        j = await TLSJoined.open(tls_mod, pki, idle_timeout=0.2)
        assert await j.done == REASON_IDLE_TIMEOUT
        assert await j.client.read(10) == b""  # a close_notify was sent on the way out
        j.client.close()
        assert j.plain is not None
        j.plain.close()

    run(body)


def test_close_with_a_farewell_while_idle_ends_with_close_notify(tls_mod: Any, pki: Any) -> None:
    """The stdlib's blocking client tells a close_notify (recv returns b"") from a bare FIN."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        client, plain, relay, done = await stdlib_client_relay(tls_mod, pki)

        def tls_peer() -> bytes:
            client.sendall(b"select 1")
            got = client.recv(5)
            while chunk := client.recv(1000):  # b"" only on close_notify
                got += chunk
            client.close()
            return got

        peer = asyncio.ensure_future(asyncio.to_thread(tls_peer))
        assert await recv_all(loop, plain, 8) == b"select 1"
        await loop.sock_sendall(plain, b"1 row")
        while relay.stats().bytes_b_to_a < 5:
            await asyncio.sleep(0.01)
        relay.close(FAREWELL)
        assert await peer == b"1 row" + FAREWELL
        assert await done == REASON_CLOSED
        assert await recv_all(loop, plain) == b""
        plain.close()

    run(body)


def test_close_with_a_farewell_mid_stream_keeps_it_whole(tls_mod: Any, pki: Any) -> None:
    bulk = random.randbytes(48 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = await TLSJoined.open(tls_mod, pki)
        assert j.plain is not None
        plain = j.plain

        async def send() -> None:
            with contextlib.suppress(OSError):  # the relay cuts the plain side mid-send
                await loop.sock_sendall(plain, bulk)

        sender = asyncio.ensure_future(send())
        got = bytearray()
        while len(got) < 1 << 20:
            got += await j.client.read(1 << 20)
        j.relay.close(FAREWELL)
        while chunk := await j.client.read(1 << 20):
            got += chunk
        k, m = farewell_split(bytes(got), bulk)
        assert m == len(FAREWELL) and 1 << 20 <= k < len(bulk)
        assert await j.done == REASON_CLOSED
        assert j.relay.stats().bytes_b_to_a == k
        await asyncio.wait_for(sender, 10)
        j.client.close()
        plain.close()

    run(body)


def test_close_with_a_farewell_is_bounded_when_a_reads_nothing(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = await TLSJoined.open(tls_mod, pki, close_timeout=0.3)
        assert j.plain is not None
        await flood(j.plain, random.randbytes(65536))  # the TLS client reads nothing
        t0 = loop.time()
        j.relay.close(FAREWELL * 50_000)
        assert await j.done == REASON_CLOSED
        assert 0.2 < loop.time() - t0 < 3.0
        j.client.close()
        j.plain.close()

    run(body)


def test_context_swap_mid_traffic(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        old = await TLSJoined.open(tls_mod, pki, pki.server_ctx(tls_mod, pki.server))
        gc.collect()  # the old context object is gone: the open connection holds its own
        new = await TLSJoined.open(tls_mod, pki, pki.server_ctx(tls_mod, pki.server2))
        assert new.client.peer_cert_der() == pki.server2.der
        assert old.client.peer_cert_der() == pki.server.der
        for j in (old, new):
            assert j.plain is not None
            payload = random.randbytes(3 << 20)
            _, got = await asyncio.gather(tls_send(j.client, payload),
                                          recv_all(loop, j.plain, len(payload)))
            assert got == payload
            await loop.sock_sendall(j.plain, b"still here")
            assert await tls_recv_all(j.client, 10) == b"still here"
            await j.client.aclose()
            j.plain.close()
            # both ends close at once: whichever the relay notices first names the end
            assert await j.done in (REASON_EOF, "reset_a", "reset_b")

    run(body)


def test_tls_to_tls(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        front, client = await handshaken(tls_mod, pki.server_ctx(tls_mod), pki.client_ctx(tls_mod))
        upstream, backend = await handshaken(tls_mod, pki.server_ctx(tls_mod),
                                             pki.client_ctx(tls_mod))
        done = loop.create_future()
        relay = tls_mod.Relay(loop, front, backend, on_done=done.set_result)
        relay.start()
        payload = random.randbytes(5 << 20)
        _, got = await asyncio.gather(tls_send(client, payload),
                                      tls_recv_all(upstream, len(payload)))
        assert got == payload
        await upstream.write(b"pong")
        assert await client.read(10) == b"pong"
        await client.aclose()
        assert await upstream.read(10) == b""
        await upstream.aclose()
        assert await done == REASON_EOF

    run(body)


def test_many_concurrent_tls_relays_and_no_fd_leaks(tls_mod: Any, pki: Any) -> None:
    count = 300

    async def body() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        server_ctx, client_ctx = pki.server_ctx(tls_mod), pki.client_ctx(tls_mod)

        async def one(i: int) -> str:
            server, client = await handshaken(tls_mod, server_ctx, client_ctx)
            plain, inner = plain_pair()
            done = loop.create_future()
            tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result).start()
            msg = b"query %d" % i
            await client.write(msg)
            assert await recv_all(loop, plain, len(msg)) == msg
            await loop.sock_sendall(plain, msg.upper())
            assert await client.read(100) == msg.upper()
            await client.aclose()
            plain.close()
            return await done

        sem = asyncio.Semaphore(100)  # handshakes in flight; all relays stay open together

        async def limited(i: int) -> str:
            async with sem:
                return await one(i)

        reasons = await asyncio.gather(*(limited(i) for i in range(count)))
        assert len(reasons) == count and set(reasons) <= {REASON_EOF, "reset_b"}
        tls_mod.close_engine(loop)
        assert open_fds() <= before  # no new fds (others may be closed by GC meanwhile)

    run(body, timeout=120)


def test_stdlib_asyncio_client_through_the_relay(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        ctx: ssl.SSLContext = pki.stdlib_client()

        async def accept() -> tuple[Any, socket.socket]:
            conn, _ = await loop.sock_accept(srv)
            stream = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), conn.detach())
            await stream.handshake()
            plain, inner = plain_pair()
            tls_mod.Relay(loop, stream, inner.detach()).start()
            return stream, plain

        accepted = asyncio.ensure_future(accept())
        reader, writer = await asyncio.open_connection(
            *srv.getsockname(), ssl=ctx, server_hostname="proxy.mwi.test")
        _, plain = await accepted
        writer.write(b"SELECT 1")
        assert await recv_all(loop, plain, 8) == b"SELECT 1"
        await loop.sock_sendall(plain, b"1 row")
        assert await reader.readexactly(5) == b"1 row"
        writer.close()
        plain.close()
        srv.close()

    run(body)
