"""Acceptors, both builds: pause() and resume() lose no caller (accepted and mid-handshake
connections are handed over, the rest wait in the backlog), close() resets none that
was accepted, a Unix socket's peers are one source ("local") for the caps, and a cap
refusal is handed over as Accepted("capped") in plain mode too."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from typing import Any

from mwiproxy._native.relaytypes import ACC_CAPPED, Accepted

from .relaykit import run


def _listener() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0), backlog=512)
    srv.setblocking(False)
    return srv


async def _until(pred: Any, timeout: float = 30.0) -> None:
    """Wait for the event itself; the deadline only bounds a hang."""
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _echo_check(clients: list[socket.socket], fds: list[int]) -> None:
    """Each handed fd is the live server end of one client: a byte goes through."""
    servers = [socket.socket(fileno=fd) for fd in fds]
    by_peer = {s.getpeername(): s for s in servers}
    assert len(by_peer) == len(clients)
    for i, c in enumerate(clients):
        c.sendall(bytes([i % 256]))
        server = by_peer[c.getsockname()]
        server.setblocking(True)
        assert server.recv(1) == bytes([i % 256])
    for s in servers:
        s.close()


def test_pause_keeps_callers_in_the_backlog_and_resume_serves_them(tls_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        got: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, got.append)
        first = socket.create_connection(srv.getsockname())
        await _until(lambda: len(got) == 1)
        acc.pause()
        acc.resume()
        acc.pause()  # the last call wins
        assert acc.paused
        waiting = [socket.create_connection(srv.getsockname()) for _ in range(20)]
        await asyncio.sleep(0.2)  # nothing may come while paused
        assert len(got) == 1 and acc.stats().accepted == 1
        acc.resume()
        assert not acc.paused
        await _until(lambda: len(got) == 21)
        _echo_check([first, *waiting], got)
        st = acc.stats()
        assert (st.accepted, st.handed, st.handshake_failed) == (21, 21, 0)
        acc.close()
        for c in [first, *waiting]:
            c.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_pause_hands_over_the_handshakes_under_way(tls_mod: Any, pki: Any) -> None:
    count = 5

    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        streams: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, streams.append, pki.server_ctx(tls_mod))
        raw = [socket.create_connection(srv.getsockname()) for _ in range(count)]
        await _until(lambda: acc.stats().handshaking == count)  # accepted, no hello yet
        acc.pause()
        ctx: ssl.SSLContext = pki.stdlib_client()

        def handshake(sock: socket.socket) -> ssl.SSLSocket:
            return ctx.wrap_socket(sock, server_hostname="proxy.mwi.test")

        clients = [await asyncio.to_thread(handshake, s) for s in raw]
        await _until(lambda: len(streams) == count)
        assert all(s.version() == "TLSv1.3" for s in streams)
        st = acc.stats()
        assert (st.handed, st.handshake_failed, st.handshaking) == (count, 0, 0)
        assert acc.paused
        for s in streams:
            s.close()
        for c in clients:
            c.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_close_resets_no_accepted_caller(tls_mod: Any) -> None:
    """A burst sits in the backlog; the acceptor is closed as its first connection is
    handed over. Every caller reaches an owner: the closed acceptor hands over what it
    had accepted, a new one on the same socket takes the rest from the backlog."""
    count = 60

    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        clients = [socket.create_connection(srv.getsockname()) for _ in range(count)]
        got: list[int] = []
        first: list[Any] = []

        def on_accept(fd: int) -> None:
            got.append(fd)
            if len(got) == 1:
                first[0].close()

        first.append(tls_mod.Acceptor(loop, srv, on_accept))
        await _until(lambda: got and first[0].closed)
        await asyncio.sleep(0.2)  # what the closed one still hands over has come
        second = tls_mod.Acceptor(loop, srv, got.append)
        await _until(lambda: len(got) == count)
        _echo_check(clients, got)
        assert first[0].stats().handshake_failed == 0
        if hasattr(tls_mod, "engine_for"):  # native: the engine let go of the closed one
            await _until(lambda: len(tls_mod.engine_for(loop).acceptors) == 1)
        second.close()
        for c in clients:
            c.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_unix_peers_are_one_source_and_plain_caps_hand_over_a_notice(tls_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        path = os.path.join(tempfile.mkdtemp(), "s")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(16)
        got: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, got.append, limits=(2, 2))

        def dial() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        clients = [dial(), dial()]
        await _until(lambda: len(got) == 2)
        assert acc.stats().pending == 2
        over = dial()  # over the cap: closed unread, the notice handed over
        await _until(lambda: len(got) == 3)
        notice = got[2]
        assert isinstance(notice, Accepted)
        assert (notice.outcome, notice.conn, notice.peer, notice.source) == \
            (ACC_CAPPED, None, "local", "local")
        assert over.recv(1) == b""
        acc.release("local")
        assert acc.stats().pending == 1
        clients.append(dial())
        await _until(lambda: len(got) == 4)
        assert isinstance(got[3], int)
        st = acc.stats()
        assert (st.accepted, st.handed, st.capped, st.pending) == (4, 3, 1, 2)
        for fd in got[:2] + got[3:]:
            os.close(fd)
        for c in [*clients, over]:
            c.close()
        acc.close()
        srv.close()
        os.unlink(path)
        tls_mod.close_engine(loop)

    run(body)


def test_grant_takes_exactly_one_caller_per_slot(tls_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        got: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, got.append)
        acc.grant(2)
        clients = [socket.create_connection(srv.getsockname()) for _ in range(5)]
        await _until(lambda: len(got) == 2)
        await asyncio.sleep(0.2)  # out of slots: the other three stay in the backlog
        assert acc.stats().accepted == 2
        acc.grant(1)
        await _until(lambda: len(got) == 3)
        await asyncio.sleep(0.2)
        assert acc.stats().accepted == 3
        acc.grant(5)
        await _until(lambda: len(got) == 5)
        _echo_check(clients, got)
        acc.close()
        for c in clients:
            c.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_a_slot_comes_back_when_a_handshake_fails(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        streams: list[Any] = []
        acc = tls_mod.Acceptor(loop, srv, streams.append, pki.server_ctx(tls_mod))
        acc.grant(1)
        leaver = socket.create_connection(srv.getsockname())
        await _until(lambda: acc.stats().handshaking == 1)
        ctx: ssl.SSLContext = pki.stdlib_client()

        def handshake() -> ssl.SSLSocket:
            raw = socket.create_connection(srv.getsockname())
            return ctx.wrap_socket(raw, server_hostname="proxy.mwi.test")

        good = asyncio.ensure_future(asyncio.to_thread(handshake))
        await asyncio.sleep(0.2)  # the one slot is taken: the good caller waits
        assert acc.stats().accepted == 1 and not streams
        leaver.close()  # its handshake fails: the slot comes back, the good one is taken
        client = await good
        await _until(lambda: len(streams) == 1)
        st = acc.stats()
        assert (st.accepted, st.handed, st.handshake_failed) == (2, 1, 1)
        streams[0].close()
        client.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(loop)

    run(body)


def test_a_closed_acceptor_keeps_its_counts_through_the_engine_close(tls_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        srv = _listener()
        got: list[int] = []
        acc = tls_mod.Acceptor(loop, srv, got.append)
        client = socket.create_connection(srv.getsockname())
        await _until(lambda: len(got) == 1)
        acc.close()
        tls_mod.close_engine(loop)  # before or after its farewell: the counts stay
        assert (acc.stats().accepted, acc.stats().handed) == (1, 1)
        os.close(got[0])
        client.close()
        srv.close()

    run(body)
