"""Client-side TLS session resumption, both builds: a client context keeps a few sessions
per server name and peer address and offers them again; a session never leaves the
context (the client certificate) that made it; a resumed session still shows the peer's
certificate, so the callers' server-name checks run as on a full handshake."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mwiproxy._native import TLSError, tls_py
from mwiproxy.relay.tlsnames import certificate_names

from .relaykit import run
from .test_twins_differential import SETTINGS, each_build
from .tlskit import Pki

PKI = Pki()  # module-wide: hypothesis reruns bodies, not fixtures
OTHER = PKI.ca.issue("bot:other")  # a second client certificate from the same CA
NAME = "proxy.mwi.test"


class Peer:
    """One listening address: every dial reaches the same place (a session's key)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.srv = socket.create_server((host, 0), family=family)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(self.srv.getsockname()[:2])
        server, _ = self.srv.accept()
        return client, server

    def close(self) -> None:
        self.srv.close()


async def dial(mod: Any, peer: Peer, server_ctx: Any, client_ctx: Any,
               name: str | None = NAME) -> dict[str, Any]:
    """One connection, with a byte from the server (TLS 1.3 tickets come before it)."""
    loop = asyncio.get_running_loop()
    c, s = peer.pair()
    server = mod.TLSStream(loop, server_ctx, s.detach())
    client = mod.TLSStream(loop, client_ctx, c.detach(), server_hostname=name)
    try:
        await asyncio.gather(server.handshake(), client.handshake())
        await server.write(b"x")
        assert await client.read(1) == b"x"
        return {"reused": client.session_reused(), "server_reused": server.session_reused(),
                "client_cert": server.peer_cert_der(), "server_cert": client.peer_cert_der()}
    finally:
        server.close()
        client.close()


def test_the_second_dial_to_a_name_and_address_resumes(tls_mod: Any) -> None:
    async def body() -> None:
        server_ctx, client_ctx = PKI.server_ctx(tls_mod), PKI.client_ctx(tls_mod)
        here, there = Peer(), Peer()
        first = await dial(tls_mod, here, server_ctx, client_ctx)
        again = await dial(tls_mod, here, server_ctx, client_ctx)
        assert (first["reused"], again["reused"], again["server_reused"]) == (False, True, True)
        assert client_ctx.cached_sessions == 1
        # same server context (it could resume), but another address or another name:
        # the session is not offered there
        assert not (await dial(tls_mod, there, server_ctx, client_ctx))["reused"]
        assert not (await dial(tls_mod, here, server_ctx, client_ctx, "other.test"))["reused"]
        assert client_ctx.cached_sessions == 3
        assert server_ctx.cached_sessions == 0
        here.close()
        there.close()

    run(body)


def test_ipv6_and_unix_peers_resume_too(tls_mod: Any) -> None:
    async def body() -> None:
        server_ctx, client_ctx = PKI.server_ctx(tls_mod), PKI.client_ctx(tls_mod)
        try:
            v6 = Peer("::1")
        except OSError:
            pytest.skip("no IPv6 loopback")
        assert [(await dial(tls_mod, v6, server_ctx, client_ctx))["reused"]
                for _ in range(2)] == [False, True]
        v6.close()
        unix = UnixPeer()
        assert [(await dial(tls_mod, unix, server_ctx, client_ctx))["reused"]
                for _ in range(2)] == [False, True]
        assert client_ctx.cached_sessions == 2

    run(body)


class UnixPeer(Peer):
    """A socketpair: an unnamed peer, so only the server name tells sessions apart."""

    def __init__(self) -> None:
        pass

    def pair(self) -> tuple[socket.socket, socket.socket]:
        return socket.socketpair()


def test_a_context_keeps_a_few_sessions_the_oldest_go_first(tls_mod: Any) -> None:
    async def body() -> None:
        server_ctx, client_ctx = PKI.server_ctx(tls_mod), PKI.client_ctx(tls_mod)
        peers = [Peer() for _ in range(tls_py.MAX_SESSIONS + 2)]
        for peer in peers:
            await dial(tls_mod, peer, server_ctx, client_ctx)
        assert client_ctx.cached_sessions == tls_py.MAX_SESSIONS
        assert not (await dial(tls_mod, peers[0], server_ctx, client_ctx))["reused"]
        assert (await dial(tls_mod, peers[-1], server_ctx, client_ctx))["reused"]
        for peer in peers:
            peer.close()

    run(body)


def test_a_session_is_never_offered_with_another_certificate(tls_mod: Any) -> None:
    """Attack: a session made with certificate A must not let a context holding
    certificate B sign in as A (nor A's context keep B's identity). Both contexts talk to
    one server context, which would resume anything it is offered."""
    async def body() -> None:
        server_ctx = PKI.server_ctx(tls_mod)
        ctx_a, ctx_b = PKI.client_ctx(tls_mod), PKI.client_ctx(tls_mod, OTHER)
        peer = Peer()
        await dial(tls_mod, peer, server_ctx, ctx_a)
        assert (await dial(tls_mod, peer, server_ctx, ctx_a))["client_cert"] == PKI.client.der
        as_b = await dial(tls_mod, peer, server_ctx, ctx_b)
        assert not as_b["reused"] and as_b["client_cert"] == OTHER.der
        as_b = await dial(tls_mod, peer, server_ctx, ctx_b)
        assert as_b["reused"] and as_b["client_cert"] == OTHER.der
        as_a = await dial(tls_mod, peer, server_ctx, ctx_a)
        assert as_a["reused"] and as_a["client_cert"] == PKI.client.der
        peer.close()

    run(body)


def test_a_resumed_session_still_shows_the_server_certificate(tls_mod: Any) -> None:
    """The callers check the server name on the peer certificate after every handshake
    (local proxy, remote engine, verify-full databases): on a resumed session OpenSSL
    restores it from the session, so the check runs, passes for the right name, and still
    refuses a wrong one."""
    async def body() -> None:
        server_ctx, client_ctx = PKI.server_ctx(tls_mod), PKI.client_ctx(tls_mod)
        peer = Peer()
        for name, valid in ((NAME, True), ("not-the-proxy.test", False)):
            for reused in (False, True):
                seen = await dial(tls_mod, peer, server_ctx, client_ctx, name)
                assert seen["reused"] is reused
                assert seen["server_cert"] == PKI.server.der
                assert certificate_names(seen["server_cert"], name) is valid
        peer.close()

    run(body)


def test_a_session_is_not_offered_past_the_server_certificate(tls_mod: Any) -> None:
    """Attack: a resumed session skips verifying the server's certificate, so a cached
    one must not stretch trust in that certificate past its notAfter: once it has
    passed, the next dial is a full handshake, which refuses the expired certificate."""
    short = PKI.ca.issue("proxy-short", dns=[NAME], valid_for=dt.timedelta(seconds=4))

    async def body() -> None:
        server_ctx, client_ctx = PKI.server_ctx(tls_mod, short), PKI.client_ctx(tls_mod)
        peer = Peer()
        await dial(tls_mod, peer, server_ctx, client_ctx)
        assert client_ctx.cached_sessions == 1
        for _ in range(600):  # the event: the certificate's end drops the session
            if client_ctx.cached_sessions == 0:
                break
            await asyncio.sleep(0.1)
        assert client_ctx.cached_sessions == 0
        with pytest.raises(TLSError, match="certificate has expired"):
            await dial(tls_mod, peer, server_ctx, client_ctx)
        peer.close()

    run(body, timeout=120)


# -- the twin's cache rules, with sessions of any age (the native build's clock is real) --

def _session(sid: bytes, age: int, timeout: int = 7200) -> Any:
    return SimpleNamespace(id=sid, has_ticket=True, time=int(time.time()) - age,
                           timeout=timeout)


def test_the_twins_cache_drops_expired_sessions_and_keeps_only_resumable_ones() -> None:
    sessions = tls_py.Sessions()
    sessions.keep("a|1", _session(b"1", age=7300))  # outlived its lifetime
    sessions.keep("b|2", _session(b"2", age=10))
    sessions.keep("c|3", SimpleNamespace(id=b"", has_ticket=False, time=0, timeout=0))
    sessions.keep("", _session(b"4", age=0))  # no key: not kept
    sessions.keep("d|4", _session(b"5", age=0), not_after=int(time.time()) - 1)  # cert ended
    assert len(sessions) == 1
    assert sessions.get("a|1") is None and sessions.get("c|3") is None
    assert sessions.get("b|2").id == b"2"
    for i in range(tls_py.MAX_SESSIONS):  # full: an expired one would go first, then the oldest
        sessions.keep(f"k|{i}", _session(bytes([i]), age=0))
    assert sessions.get("b|2") is None and len(sessions) == tls_py.MAX_SESSIONS


# -- differential: both builds resume exactly when the model says -------------------

DIALS = st.lists(st.tuples(st.integers(0, 1), st.sampled_from([NAME, "other.test", None]),
                           st.integers(0, 1)), min_size=1, max_size=6)


def resumption(dials: list[tuple[int, str | None, int]]) -> Any:
    async def scenario(mod: Any) -> dict[str, Any]:
        server_ctx = PKI.server_ctx(mod)
        contexts = [PKI.client_ctx(mod), PKI.client_ctx(mod, OTHER)]
        peers = [Peer(), Peer()]
        seen = []
        for peer, name, ctx in dials:
            out = await dial(mod, peers[peer], server_ctx, contexts[ctx], name)
            seen.append((out["reused"], out["client_cert"] == (PKI.client, OTHER)[ctx].der))
        for p in peers:
            p.close()
        return {"dials": seen, "cached": [c.cached_sessions for c in contexts]}

    return scenario


@pytest.mark.native_only
@SETTINGS
@given(DIALS)
def test_both_builds_resume_alike(dials: list[tuple[int, str | None, int]]) -> None:
    seen = each_build(resumption(dials))
    model = [(d in dials[:i], True) for i, d in enumerate(dials)]
    assert seen["dials"] == model
    assert seen["cached"] == [len({(p, n) for p, n, c in dials if c == k}) for k in (0, 1)]
