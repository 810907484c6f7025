"""Acceptors, both builds: plain and TLS connections handed over once ready, failed and
stalled handshakes counted and closed, and the relay taking over from there."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
from typing import Any

import pytest

from .relaykit import recv_all, run
from .tlskit import plain_pair


def _listener() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0), backlog=512)
    srv.setblocking(False)
    return srv


async def _until(pred: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_plain_connections_are_handed_over(tls_mod: Any) -> None:
    count = 50

    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        got: list[int] = []
        acc = tls_mod.Acceptor(loop, srv, got.append)
        clients = [socket.create_connection(srv.getsockname()) for _ in range(count)]
        await _until(lambda: len(got) == count)
        assert all(isinstance(fd, int) for fd in got)
        for i, (c, fd) in enumerate(zip(clients, sorted(got), strict=True)):
            server = socket.socket(fileno=fd)
            c.sendall(b"hi %d" % i)
            assert server.recv(10).startswith(b"hi ")
            server.close()
            c.close()
        st = acc.stats()
        assert (st.accepted, st.handed, st.handshaking) == (count, count, 0)
        acc.close()
        assert acc.closed
        late = socket.create_connection(srv.getsockname())  # sits in the backlog
        await asyncio.sleep(0.1)
        assert len(got) == count
        late.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_tls_connections_are_handed_handshaken_and_relayed(tls_mod: Any, pki: Any) -> None:
    count = 20

    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        streams: asyncio.Queue[Any] = asyncio.Queue()
        timed: list[float] = []  # accept -> handshaken, once per connection
        acc = tls_mod.Acceptor(loop, srv, streams.put_nowait, pki.server_ctx(tls_mod),
                               on_handshake=timed.append)
        ctx: ssl.SSLContext = pki.stdlib_client()

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection(
                *srv.getsockname(), ssl=ctx, server_hostname="proxy.mwi.test")
            stream = await streams.get()
            assert stream.version() == "TLSv1.3"
            assert stream.server_name() == "proxy.mwi.test"
            assert stream.peer_cert_der() == pki.client.der
            plain, inner = plain_pair()
            tls_mod.Relay(loop, stream, inner.detach()).start()
            payload = random.randbytes(random.randrange(1, 300_000))
            writer.write(payload)
            assert await recv_all(loop, plain, len(payload)) == payload
            await loop.sock_sendall(plain, b"reply %d" % i)
            assert await reader.readexactly(len(b"reply %d" % i)) == b"reply %d" % i
            writer.close()
            plain.close()

        for i in range(count):  # one at a time: each stream is the client's own
            await one(i)
        st = acc.stats()
        assert (st.accepted, st.handed, st.handshake_failed) == (count, count, 0)
        assert len(timed) == count and all(0 < t < 60 for t in timed)
        acc.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_failed_and_stalled_handshakes_are_counted_and_closed(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        got: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, got.append, pki.server_ctx(tls_mod),
                               handshake_timeout=0.3)
        garbage = socket.create_connection(srv.getsockname())
        garbage.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(100))
        silent = socket.create_connection(srv.getsockname())
        gone = socket.create_connection(srv.getsockname())
        gone.close()
        await _until(lambda: acc.stats().handshake_timeouts == 1)
        st = acc.stats()
        assert st.accepted == 3 and st.handshake_failed == 2 and st.handed == 0
        assert st.handshaking == 0 and got == []
        silent.settimeout(5)
        assert silent.recv(10) == b""  # closed by the acceptor
        garbage.close()
        silent.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_bad_arguments_are_refused(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        not_listening = socket.socket()
        with pytest.raises(OSError):
            tls_mod.Acceptor(loop, not_listening, print)
        not_listening.close()
        srv = _listener()
        with pytest.raises(ValueError):
            tls_mod.Acceptor(loop, srv, print, pki.client_ctx(tls_mod))
        with pytest.raises(TypeError):
            tls_mod.Acceptor(loop, "nope", print)
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


@pytest.mark.native_only
def test_relay_takes_an_upstream_whose_connect_is_in_progress() -> None:
    """The native relay joins a socket right after a nonblocking connect(): bytes wait for
    the connection, and a refused connect ends the relay instead of hanging it."""
    tls_mod = pytest.importorskip("mwiproxy._native._relay")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        backend = _listener()
        client, inner = plain_pair()
        up = socket.socket()
        up.setblocking(False)
        assert up.connect_ex(backend.getsockname()) in (0, errno.EINPROGRESS)
        done = loop.create_future()
        tls_mod.Relay(loop, inner.detach(), up.detach(), on_done=done.set_result).start()
        await loop.sock_sendall(client, b"early bytes")
        conn, _ = await loop.sock_accept(backend)
        assert await recv_all(loop, conn, 11) == b"early bytes"
        conn.close()
        client.close()
        await done
        port = backend.getsockname()[1]
        backend.close()
        client, inner = plain_pair()
        up = socket.socket()
        up.setblocking(False)
        up.connect_ex(("127.0.0.1", port))  # nobody listens there any more
        done = loop.create_future()
        tls_mod.Relay(loop, inner.detach(), up.detach(), on_done=done.set_result).start()
        assert await done in ("reset_b", "error")
        client.close()
        tls_mod.close_engine(loop)

    run(body)
