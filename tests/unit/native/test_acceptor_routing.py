"""The routing acceptor, both builds: first bytes peeked (never read) and classified,
database ALPNs handshaken on the worker, the rest handed over raw with its kind,
ClientHellos beyond one record and refused handshakes handed over with the reason, peers
that leave only counted, admission caps per source, stalled clients costing no CPU, a
new context for new handshakes; and both builds agree outcome for outcome."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import pytest

from mwiproxy._native.tls_py import _memfile

from . import hellos
from .relaykit import run

DB, AUTH = "postgresql", "mwi-auth"
PG_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def _listener() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0), backlog=512)
    srv.setblocking(False)
    return srv


def _client(port: int, data: bytes = b"", source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    if data:
        s.sendall(data)
    return s


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        return s.recv(10) == b""
    except ConnectionResetError:  # closed with our bytes unread: a reset
        return True


async def _until(pred: Any, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _acceptor(mod: Any, pki: Any, got: list[Any], srv: socket.socket, **kw: Any) -> Any:
    ctx = pki.server_ctx(mod, verify="optional", alpn=[DB, AUTH])
    return mod.Acceptor(asyncio.get_running_loop(), srv, got.append, ctx,
                        kw.pop("handshake_timeout", 10.0), route=[DB], **kw)


def _tls_client(pki: Any, issued: Any = None, alpn: list[str] | None = None
                ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.ca.pem.decode())
    issued = issued or pki.client
    with _memfile(issued.cert_pem) as cert, _memfile(issued.key_pem) as key:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(alpn or [DB])
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """A blocking stdlib client (another TLS stack): the ALPN it got, or why it failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="proxy.mwi.test") as tls:
                tls.sendall(b"x")
                return tls.selected_alpn_protocol()
        except (ssl.SSLError, OSError) as e:
            return f"failed: {e}"


def _close(got: list[Any]) -> None:
    for a in got:
        if a.outcome == "tls":
            a.conn.close()
        elif a.outcome == "raw":
            socket.socket(fileno=a.conn).close()


def test_kinds_are_routed_and_raw_ones_handed_over_unread(tls_mod: Any, pki: Any) -> None:
    auth_hello = hellos.client_hello(alpn=[AUTH])
    sent = {"auth": auth_hello, "pg": PG_SSL_REQUEST, "http": b"GET / HTTP/1.1\r\n\r\n",
            "garbage": b"\x00\x01\x02\x03 nonsense, nonsense"}

    async def body() -> list[Any]:
        srv = _listener()
        got: list[Any] = []
        acc = _acceptor(tls_mod, pki, got, srv)
        port = srv.getsockname()[1]
        alpn = await asyncio.to_thread(_handshake, port, _tls_client(pki, alpn=[DB]))
        assert alpn == DB
        clients = [_client(port, data) for data in sent.values()]
        await _until(lambda: len(got) == 5)
        st = acc.stats()
        assert (st.accepted, st.handed, st.refused, st.handshaking) == (5, 5, 0, 0)
        # accept and handover times, taken by the acceptor on time.monotonic()'s clock
        now = time.monotonic()
        assert all(0 < a.accepted_at <= a.ready_at <= now for a in got)
        out = []
        for a in got[1:]:
            s = socket.socket(fileno=socket.dup(a.conn))
            out.append((a.outcome, a.kind, a.alpn, s.recv(100_000, socket.MSG_PEEK)))
            s.close()
        tls = got[0]
        assert (tls.outcome, tls.kind, tls.alpn) == ("tls", "tls", (DB,))
        assert tls.conn.alpn() == DB and tls.conn.peer_cert_der() == pki.client.der
        assert tls.peer.startswith("127.0.0.1:") and tls.source == "127.0.0.1"
        _close(got)
        for c in clients:
            c.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(asyncio.get_running_loop())
        return out

    out = run(body)
    assert out == [("raw", "tls", (AUTH,), auth_hello), ("raw", "pg_ssl", (), PG_SSL_REQUEST),
                   ("raw", "http", (), sent["http"]), ("raw", "garbage", (), sent["garbage"])]


def test_stalled_two_byte_clients_cost_no_cpu(tls_mod: Any, pki: Any) -> None:
    async def body() -> tuple[float, Any, str | None]:
        srv = _listener()
        got: list[Any] = []
        acc = _acceptor(tls_mod, pki, got, srv, handshake_timeout=60)
        port = srv.getsockname()[1]
        stalled = [_client(port, b"\x16\x03") for _ in range(100)]
        await _until(lambda: acc.stats().handshaking == 100)
        cpu = time.process_time()
        await asyncio.sleep(2)
        used = time.process_time() - cpu
        alpn = await asyncio.to_thread(_handshake, port, _tls_client(pki))
        # the client is done first (TLS 1.3): the server hands over once it reads the
        # client's Finished
        await _until(lambda: acc.stats().handed == 1)
        st = acc.stats()
        _close(got)
        for s in stalled:
            s.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(asyncio.get_running_loop())
        return used, st, alpn

    used, st, alpn = run(body)
    assert used < 0.3, f"{used:.2f} s of CPU in 2 s with 100 stalled clients"
    assert alpn == DB and st.handshaking == 100 and st.handed == 1


def test_caps_per_source_and_in_all(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        srv = _listener()
        got: list[Any] = []
        acc = _acceptor(tls_mod, pki, got, srv, limits=(5, 2), handshake_timeout=60)
        port = srv.getsockname()[1]
        held = [_client(port, b"\x16", "127.0.0.2") for _ in range(2)]
        await _until(lambda: acc.stats().pending == 2)
        over = [_client(port, b"\x16", "127.0.0.2") for _ in range(3)]
        await _until(lambda: acc.stats().capped == 3 and len(got) == 1)
        assert [(a.outcome, a.source) for a in got] == [("capped", "127.0.0.2")]  # once
        assert all(_closed_by_server(s) for s in over)  # closed at accept
        raw = _client(port, PG_SSL_REQUEST, "127.0.0.3")  # another source is let in
        await _until(lambda: len(got) == 2)
        assert (got[1].outcome, got[1].source) == ("raw", "127.0.0.3")
        assert acc.stats().pending == 3  # a raw one counts until released
        more = [_client(port, b"\x16", "127.0.0.4") for _ in range(2)]
        await _until(lambda: acc.stats().pending == 5)
        acc.arm_notice()
        last = _client(port, b"\x16", "127.0.0.5")  # the global cap
        await _until(lambda: acc.stats().capped == 4 and len(got) == 3)
        assert (got[2].outcome, got[2].source) == ("capped", "127.0.0.5")
        acc.release("127.0.0.3")
        for s in held:
            s.close()
        await _until(lambda: acc.stats().pending == 2)
        _close(got)
        for s in [*over, raw, *more, last]:
            s.close()
        acc.close()
        srv.close()
        tls_mod.close_engine(asyncio.get_running_loop())

    run(body)


def _hello_beyond_a_record() -> tuple[bytes, bytes]:
    hello = hellos.client_hello(alpn=[DB])
    split = hellos.refragment(hellos.handshake_of(hello), [100])
    huge = b"\x16\x03\x01" + (20000).to_bytes(2, "big") + b"\x01"
    return split, huge


def _refusals(mod: Any, pki: Any) -> tuple[list[tuple[str, str, tuple[str, ...], str]], Any]:
    """Each way a connection ends before handover, in order; what each build made of it."""
    split, huge = _hello_beyond_a_record()

    async def body() -> tuple[list[tuple[str, str, tuple[str, ...], str]], Any]:
        srv = _listener()
        got: list[Any] = []
        acc = _acceptor(mod, pki, got, srv, handshake_timeout=2)
        port = srv.getsockname()[1]
        steps: list[Any] = [
            lambda: _client(port, split).close(),
            lambda: _client(port, huge).close(),
            lambda: _handshake(port, _tls_client(pki, issued=pki.stranger)),
            lambda: _handshake(port, _tls_client(pki, issued=pki.expired)),
            lambda: _client(port, hellos.client_hello(alpn=[DB])[:40]).close(),  # leaves
        ]
        for i, step in enumerate(steps):
            await asyncio.to_thread(step)
            await _until(lambda n=i + 1: sum(acc.stats()[2:4]) + acc.stats().refused == n)
        silent = _client(port)
        await _until(lambda: acc.stats().handshake_timeouts == 1)
        silent.close()
        st = acc.stats()
        acc.close()
        srv.close()
        mod.close_engine(asyncio.get_running_loop())
        return [(a.outcome, a.kind, a.alpn, a.reason) for a in got], st

    return run(body)  # type: ignore[no-any-return]


def test_refusals_carry_the_reason_and_leavers_are_only_counted(tls_mod: Any, pki: Any
                                                                 ) -> None:
    got, st = _refusals(tls_mod, pki)
    assert [g[0] for g in got] == ["refused"] * 4
    assert "spread over several TLS records (100 bytes in the first)" in got[0][3]
    assert got[1][3] == "the first TLS record is 20000 bytes, over the 16384-byte limit"
    assert got[2][1:3] == ("tls", (DB,))
    assert got[2][3].startswith("certificate verify failed: unable to get local issuer")
    assert got[3][3] == "certificate verify failed: certificate has expired"
    assert (st.refused, st.handshake_failed, st.handshake_timeouts, st.handed) == (4, 1, 1, 0)


def test_a_new_context_serves_new_handshakes(tls_mod: Any, pki: Any) -> None:
    async def body() -> tuple[bytes, bytes]:
        srv = _listener()
        got: list[Any] = []
        acc = _acceptor(tls_mod, pki, got, srv)
        port = srv.getsockname()[1]

        def server_cert() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                    _tls_client(pki).wrap_socket(raw) as tls:
                tls.sendall(b"x")
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return der

        before = await asyncio.to_thread(server_cert)
        acc.set_context(pki.server_ctx(tls_mod, pki.server2, "optional", [DB, AUTH]))
        after = await asyncio.to_thread(server_cert)
        _close(got)
        acc.close()
        srv.close()
        tls_mod.close_engine(asyncio.get_running_loop())
        return before, after

    before, after = run(body)
    assert before == pki.server.der and after == pki.server2.der


@pytest.mark.native_only  # compares the compiled build with its twin
def test_both_builds_agree_on_every_refusal(pki: Any) -> None:
    from .conftest import TLS_IMPLS

    py_mod, native_mod = (p.values[0] for p in TLS_IMPLS)
    py_got, py_st = _refusals(py_mod, pki)
    native_got, native_st = _refusals(native_mod, pki)
    assert py_got == native_got
    assert py_st == native_st
