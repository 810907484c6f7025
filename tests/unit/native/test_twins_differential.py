"""Differential tests: the compiled core and its pure-Python twin, given the same inputs,
deliver the same bytes, end with the same reasons and count the same.

Each scenario runs once per build (a fresh event loop each) and returns what a user of
the build could observe; the two observations must be equal, and are also checked
against what was sent, so two builds broken alike do not agree their way to green.
The classifier has its own differential test (test_tlsrec_differential.py)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mwiproxy._native import REASON_CLOSED, REASON_EOF, REASON_RESET_A, Framing
from mwiproxy.wire import ping

from .conftest import _PureTLS, _relay_native
from .innerkit import inner_pair
from .relaykit import FAREWELL, Joined, recv_all, run, tcp_pair
from .test_tls_relay import stdlib_client_relay
from .tlskit import Pki, plain_pair

pytest.importorskip("mwiproxy._native._relay", reason="extension not built")
pytestmark = pytest.mark.native_only

BUILDS = {"py": _PureTLS, "native": _relay_native}
PKI = Pki()  # one PKI for every example (hypothesis reruns the body, not fixtures)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# A step: which end sends, and how many bytes (tiny, around one record, several MB)
SIZES = st.one_of(st.integers(1, 64), st.integers(16_000, 17_000), st.integers(1, 3 << 20))
STEPS = st.lists(st.tuples(st.sampled_from("ab"), SIZES), max_size=5)

Scenario = Callable[[Any], Awaitable[dict[str, Any]]]


def each_build(scenario: Scenario, timeout: float = 120) -> dict[str, Any]:
    """Run the scenario on both builds; their observations must be equal: the one."""
    seen = {}
    for name, mod in BUILDS.items():
        async def body(mod: Any = mod) -> dict[str, Any]:
            out = await scenario(mod)
            mod.close_engine(asyncio.get_running_loop())
            return out

        seen[name] = run(body, timeout=timeout)
    assert seen["py"] == seen["native"]
    return seen["native"]


def digest(data: bytes | bytearray) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def payloads(steps: list[tuple[str, int]], seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(side, rng.randbytes(size)) for side, size in steps]


def sent_by(steps: list[tuple[str, bytes]], side: str) -> bytes:
    return b"".join(data for s, data in steps if s == side)


def linger_reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def outcome(read: Awaitable[bytes]) -> tuple[int, str] | str:
    """What a reader sees to the end: the bytes, or the error that ended them."""
    try:
        return digest(await read)
    except OSError as exc:
        return type(exc).__name__


# -- Relay, plain on both sides ----------------------------------------------------------

PLAIN_ENDINGS = ["eof_a_first", "eof_b_first", "reset_a", "reset_b", "farewell"]


def plain_relay(steps: list[tuple[str, bytes]], ending: str) -> Scenario:
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        j = Joined(mod.Relay, loop)
        j.relay.start()
        ends = {"a": j.a, "b": j.b}
        got = {"a": bytearray(), "b": bytearray()}
        for side, data in steps:  # each step is delivered before the next one starts
            peer = "b" if side == "a" else "a"
            _, chunk = await asyncio.gather(loop.sock_sendall(ends[side], data),
                                            recv_all(loop, ends[peer], len(data)))
            got[peer] += chunk
        seen: dict[str, Any] = {"got_a": digest(got["a"]), "got_b": digest(got["b"])}
        if ending.startswith("eof_"):
            first = ending[4]
            other = "b" if first == "a" else "a"
            ends[first].shutdown(socket.SHUT_WR)
            seen["other_sees"] = await outcome(recv_all(loop, ends[other]))
            seen["done_early"] = j.done.done()  # one half-closed way ends nothing
            await loop.sock_sendall(ends[other], b"late reply")
            ends[other].shutdown(socket.SHUT_WR)
            seen["first_sees"] = await outcome(recv_all(loop, ends[first]))
        elif ending.startswith("reset_"):
            gone = ending[6]
            linger_reset(ends[gone])
            seen["survivor_sees"] = await outcome(recv_all(loop, ends["b" if gone == "a" else "a"]))
        else:
            j.relay.close(FAREWELL)
            seen["a_sees"] = await outcome(recv_all(loop, j.a))
            seen["b_sees"] = await outcome(recv_all(loop, j.b))
        seen["reason"] = await j.done
        seen["relay"] = (j.relay.done, j.relay.reason, tuple(j.relay.stats()[:2]))
        await asyncio.sleep(0)
        seen["on_done_calls"] = j.calls
        j.close()
        return seen

    return scenario


@SETTINGS
@given(STEPS, st.sampled_from(PLAIN_ENDINGS), st.integers(0, 2**32))
def test_plain_relay_builds_agree(steps: list[tuple[str, int]], ending: str, seed: int) -> None:
    data = payloads(steps, seed)
    seen = each_build(plain_relay(data, ending))
    assert seen["got_b"] == digest(sent_by(data, "a"))
    assert seen["got_a"] == digest(sent_by(data, "b"))
    assert seen["on_done_calls"] == 1
    if ending.startswith("eof_"):
        assert seen["reason"] == REASON_EOF and seen["first_sees"] == digest(b"late reply")
    elif ending == "farewell":
        assert seen["reason"] == REASON_CLOSED and seen["a_sees"] == digest(FAREWELL)
    else:
        assert seen["reason"] == ending


# -- Relay with a `-ping` framed side ------------------------------------------------------

FRAMED_ENDINGS = ["eof", "truncated", "farewell"]


def framed_stream(steps: list[tuple[str, bytes]], rng: random.Random) -> list[bytes]:
    """What side a sends: its payloads as frames, keepalives interleaved, cut anywhere."""
    raw = b"".join(ping.KEEPALIVE * rng.randint(0, 2) + ping.frame(data)
                   for side, data in steps if side == "a")
    cuts = sorted(rng.sample(range(1, len(raw)), min(6, len(raw) - 1))) if len(raw) > 1 else []
    return [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def framed_relay(steps: list[tuple[str, bytes]], ending: str, seed: int,
                 keepalive: float | None) -> Scenario:
    """a = a framed peer (its reads deframed here), b = a plain one."""
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        j = Joined(mod.Relay, loop, framed_a=Framing(keepalive))
        j.relay.start()
        deframer = ping.Deframer()
        to_b = sent_by(steps, "a")

        async def read_a(n: int) -> bytes:
            out = b""
            while len(out) < n and (chunk := await loop.sock_recv(j.a, 1 << 20)):
                out += deframer.feed(chunk)
            return out

        async def send_a() -> None:
            for piece in framed_stream(steps, rng):
                await loop.sock_sendall(j.a, piece)

        to_a = sent_by(steps, "b")
        _, _, got_b, got_a = await asyncio.gather(
            send_a(), loop.sock_sendall(j.b, to_a), recv_all(loop, j.b, len(to_b)),
            read_a(len(to_a)))
        seen: dict[str, Any] = {"got_a": digest(got_a), "got_b": digest(got_b)}
        if ending == "eof":
            j.a.shutdown(socket.SHUT_WR)
            seen["b_sees"] = await outcome(recv_all(loop, j.b))
            await loop.sock_sendall(j.b, b"late reply")
            j.b.shutdown(socket.SHUT_WR)
            seen["a_sees"] = digest(await read_a(1 << 30))
        elif ending == "truncated":
            await loop.sock_sendall(j.a, ping.frame(b"cut short")[:rng.randint(1, 12)])
            j.a.shutdown(socket.SHUT_WR)
        else:
            j.relay.close(FAREWELL)
            seen["a_sees"] = digest(await read_a(1 << 30))
        seen["a_whole_frames"] = not deframer.mid_frame
        seen["reason"] = await j.done
        seen["relay"] = (j.relay.done, j.relay.reason, tuple(j.relay.stats()[:2]))
        j.close()
        return seen

    return scenario


@SETTINGS
@given(STEPS, st.sampled_from(FRAMED_ENDINGS), st.integers(0, 2**32),
       st.sampled_from([None, 0.01]))
def test_framed_relay_builds_agree(steps: list[tuple[str, int]], ending: str, seed: int,
                                   keepalive: float | None) -> None:
    data = payloads(steps, seed)
    seen = each_build(framed_relay(data, ending, seed, keepalive))
    assert seen["got_b"] == digest(sent_by(data, "a"))
    assert seen["got_a"] == digest(sent_by(data, "b"))
    assert seen["a_whole_frames"]
    if ending == "eof":
        assert seen["reason"] == REASON_EOF and seen["a_sees"] == digest(b"late reply")
    elif ending == "farewell":
        assert seen["reason"] == REASON_CLOSED and seen["a_sees"] == digest(FAREWELL)
    else:
        assert seen["reason"] == REASON_RESET_A


# -- TLSStream: handshake, data, close_notify (every pairing of the two builds) ----------

def tls_streams(steps: list[tuple[str, bytes]], client_build: str) -> Scenario:
    """Server on the build under test, client on `client_build`: the same exchange."""
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        cmod = BUILDS[client_build]
        c, s = tcp_pair()
        server = mod.TLSStream(loop, PKI.server_ctx(mod, alpn=["mwi-postgres"]), s.detach())
        client = cmod.TLSStream(loop, PKI.client_ctx(cmod, alpn=["x", "mwi-postgres"]),
                                c.detach(), server_hostname="proxy.mwi.test")
        await asyncio.gather(server.handshake(), client.handshake())
        seen: dict[str, Any] = {
            "server": (server.version(), server.alpn(), server.server_name(),
                       server.peer_cert_der() == PKI.client.der, server.session_reused()),
            "client": (client.version(), client.alpn(), client.peer_cert_der() == PKI.server.der),
        }
        ends = {"a": client, "b": server}
        got = {"a": bytearray(), "b": bytearray()}
        for side, data in steps:
            peer = "b" if side == "a" else "a"
            _, chunk = await asyncio.gather(ends[side].write(data),
                                            read_exactly(ends[peer], len(data)))
            got[peer] += chunk
        seen["got"] = (digest(got["a"]), digest(got["b"]))
        # the server's close_notify (the client never leaves data unread at the server,
        # whose kernel would answer a close with an RST): the client reads the end
        await server.aclose()
        seen["client_reads_end"] = await client.read(100)
        client.close()
        return seen

    return scenario


async def read_exactly(stream: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await stream.read(1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


@SETTINGS
@given(STEPS, st.sampled_from(["py", "native"]), st.integers(0, 2**32))
def test_tls_streams_agree_with_either_build_as_peer(
        steps: list[tuple[str, int]], client_build: str, seed: int) -> None:
    data = payloads(steps, seed)
    seen = each_build(tls_streams(data, client_build))
    assert seen["server"] == ("TLSv1.3", "mwi-postgres", "proxy.mwi.test", True, False)
    assert seen["got"] == (digest(sent_by(data, "b")), digest(sent_by(data, "a")))
    assert seen["client_reads_end"] == b""


# -- Relay with a TLS side, driven by an independent TLS stack (the stdlib's) ------------

TLS_ENDINGS = ["plain_end", "tls_end", "reset_tls", "reset_plain", "farewell"]


def tls_relay(steps: list[tuple[str, bytes]], ending: str) -> Scenario:
    """a = the stdlib TLS client, b = the plain end; the relay joins them."""
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        client, plain, relay, done = await stdlib_client_relay(mod, PKI)
        got = {"a": bytearray(), "b": bytearray()}
        for side, data in steps:
            if side == "a":
                _, chunk = await asyncio.gather(asyncio.to_thread(client.sendall, data),
                                                recv_all(loop, plain, len(data)))
            else:
                _, chunk = await asyncio.gather(loop.sock_sendall(plain, data),
                                                asyncio.to_thread(stdlib_read, client, len(data)))
            got["b" if side == "a" else "a"] += chunk
        seen: dict[str, Any] = {"got_a": digest(got["a"]), "got_b": digest(got["b"])}
        if ending == "plain_end":
            plain.shutdown(socket.SHUT_WR)
            seen["client_sees"] = await asyncio.to_thread(stdlib_read_end, client)
            await asyncio.to_thread(client.sendall, b"late reply")
            unwrap = asyncio.ensure_future(asyncio.to_thread(client.unwrap))
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
            await unwrap
        elif ending == "tls_end":
            unwrap = asyncio.ensure_future(asyncio.to_thread(client.unwrap))
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
            plain.shutdown(socket.SHUT_WR)  # unwrap ends on the relay's close_notify
            await unwrap
        elif ending == "reset_tls":
            linger_reset(client)
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
        elif ending == "reset_plain":
            linger_reset(plain)
            seen["client_sees"] = await asyncio.to_thread(stdlib_read_end, client)
        else:
            relay.close(FAREWELL)
            seen["client_sees"] = await asyncio.to_thread(stdlib_read_end, client)
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
        seen["reason"] = await done
        seen["relay"] = (relay.done, relay.reason, tuple(relay.stats()[:2]))
        client.close()
        plain.close()
        return seen

    return scenario


def stdlib_read(client: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n and (chunk := client.recv(n - len(out))):
        out += chunk
    return bytes(out)


def stdlib_read_end(client: ssl.SSLSocket) -> tuple[Any, str]:
    """The rest of the stream and how it ended: a close_notify, a bare end or an error."""
    out = bytearray()
    try:
        while chunk := client.recv(1 << 16):  # b"" only on a close_notify
            out += chunk
    except (ssl.SSLError, OSError) as exc:
        return digest(out), type(exc).__name__
    return digest(out), "close_notify"


@SETTINGS
@given(STEPS, st.sampled_from(TLS_ENDINGS), st.integers(0, 2**32))
def test_tls_relay_builds_agree(steps: list[tuple[str, int]], ending: str, seed: int) -> None:
    data = payloads(steps, seed)
    seen = each_build(tls_relay(data, ending))
    assert seen["got_b"] == digest(sent_by(data, "a"))
    assert seen["got_a"] == digest(sent_by(data, "b"))
    if ending == "plain_end":
        assert seen["client_sees"] == (digest(b""), "close_notify")
        assert seen["plain_sees"] == digest(b"late reply") and seen["reason"] == REASON_EOF
    elif ending == "farewell":
        assert seen["client_sees"] == (digest(FAREWELL), "close_notify")
        assert seen["reason"] == REASON_CLOSED


# -- TLS inside TLS (wrap_inner) relayed to a plain end ----------------------------------

def inner_relay(steps: list[tuple[str, bytes]], ending: str, seed: int = 0,
                framing: Framing | None = None) -> Scenario:
    """a = a client's own TLS (stdlib) inside the build's outer TLS, b = the plain end;
    with a `framing`, the client's records travel in `-ping` frames inside the outer TLS
    (cut at random, keepalives between them) and the relay keeps the client alive."""
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        server, client = await inner_pair(mod, PKI, framed=framing is not None, seed=seed)
        seen: dict[str, Any] = {
            "inner": (server.version(), server.peer_cert_der() == PKI.client.der)}
        plain, inner = plain_pair()
        done: asyncio.Future[str] = loop.create_future()
        relay = mod.Relay(loop, server, inner.detach(), on_done=done.set_result,
                          framed_a=framing)
        relay.start()
        got = {"a": bytearray(), "b": bytearray()}
        for side, data in steps:
            if side == "a":
                _, chunk = await asyncio.gather(client.write(data),
                                                recv_all(loop, plain, len(data)))
            else:
                _, chunk = await asyncio.gather(loop.sock_sendall(plain, data),
                                                client.read_all(len(data)))
            got["b" if side == "a" else "a"] += chunk
        seen["got"] = (digest(got["a"]), digest(got["b"]))
        if ending == "client_end":
            await client.shut()
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
            await loop.sock_sendall(plain, b"late reply")
            plain.shutdown(socket.SHUT_WR)
            seen["client_sees"] = (digest(await client.read_all()), client.close_notify)
        elif ending == "truncated":  # the outer stream ends inside a frame
            record_start = b"\x17\x03\x03\x00\x40" + b"\x00" * 20
            await client.outer.write(ping.frame(record_start)[:random.Random(seed).randint(1, 12)])
            await client.outer.aclose()
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
        else:
            relay.close(FAREWELL)
            seen["client_sees"] = (digest(await client.read_all()), client.close_notify)
            seen["plain_sees"] = await outcome(recv_all(loop, plain))
        if client.deframer is not None and ending != "truncated":
            seen["client_whole_frames"] = not client.deframer.mid_frame
        seen["reason"] = await done
        seen["relay"] = (relay.done, relay.reason, tuple(relay.stats()[:2]))
        client.outer.close()
        plain.close()
        return seen

    return scenario


@SETTINGS
@given(STEPS, st.sampled_from(["client_end", "farewell"]), st.integers(0, 2**32))
def test_inner_tls_relay_builds_agree(steps: list[tuple[str, int]], ending: str,
                                      seed: int) -> None:
    data = payloads(steps, seed)
    seen = each_build(inner_relay(data, ending))
    assert seen["inner"] == ("TLSv1.3", True)
    assert seen["got"] == (digest(sent_by(data, "b")), digest(sent_by(data, "a")))
    if ending == "client_end":
        assert seen["client_sees"] == (digest(b"late reply"), True)
        assert seen["reason"] == REASON_EOF
    else:
        assert seen["client_sees"] == (digest(FAREWELL), True)
        assert seen["reason"] == REASON_CLOSED


@SETTINGS
@given(STEPS, st.sampled_from(["client_end", "farewell", "truncated"]), st.integers(0, 2**32),
       st.sampled_from([None, 0.01]))
def test_framed_inner_tls_relay_builds_agree(steps: list[tuple[str, int]], ending: str,
                                             seed: int, keepalive: float | None) -> None:
    """Non-tunnel `-ping`: the same bytes, ends and reasons on both builds, the frames cut
    anywhere by the client and keepalives sent to it between records."""
    data = payloads(steps, seed)
    seen = each_build(inner_relay(data, ending, seed, Framing(keepalive)))
    assert seen["inner"] == ("TLSv1.3", True)
    assert seen["got"] == (digest(sent_by(data, "b")), digest(sent_by(data, "a")))
    if ending == "client_end":
        assert seen["client_sees"] == (digest(b"late reply"), True)
        assert seen["reason"] == REASON_EOF
    elif ending == "farewell":
        assert seen["client_sees"] == (digest(FAREWELL), True)
        assert seen["reason"] == REASON_CLOSED
    else:
        assert seen["reason"] == REASON_RESET_A
    assert seen.get("client_whole_frames", True)


# -- Acceptor: what is handed over, what is counted --------------------------------------

def accepting(good: int, garbage: int, leavers: int, stalled: int, tls: bool) -> Scenario:
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        srv = socket.create_server(("127.0.0.1", 0), backlog=64)
        srv.setblocking(False)
        handed: list[Any] = []
        ctx = PKI.server_ctx(mod, alpn=["mwi-postgres"]) if tls else None
        acc = mod.Acceptor(loop, srv, handed.append, ctx, handshake_timeout=0.5)
        addr = srv.getsockname()
        quiet = [socket.create_connection(addr) for _ in range(stalled)]
        for _ in range(garbage):
            with socket.create_connection(addr) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        for _ in range(leavers):
            socket.create_connection(addr).close()
        clients = [await connect(addr, tls) for _ in range(good)]
        total = good + garbage + leavers + stalled
        # settled: every connection taken, every handshake ended (the stalled ones time out)
        await wait_until(lambda: acc.stats().accepted == total and acc.stats().handshaking == 0
                         and len(handed) == acc.stats().handed)
        seen: dict[str, Any] = {"stats": acc.stats()._replace(accept_errors=0),
                                "handed": sorted(describe(h) for h in handed)}
        acc.close()
        seen["closed"] = acc.closed
        for h in handed:
            h.close() if tls else socket.socket(fileno=h).close()
        for s in quiet:
            s.close()
        for w in clients:
            w.close()
        srv.close()
        return seen

    return scenario


async def connect(addr: Any, tls: bool) -> asyncio.StreamWriter:
    ctx = PKI.stdlib_client() if tls else None
    if ctx is not None:
        ctx.set_alpn_protocols(["mwi-postgres"])
    _, writer = await asyncio.open_connection(*addr, ssl=ctx,
                                              server_hostname="proxy.mwi.test" if tls else None)
    return writer


def describe(conn: Any) -> tuple[Any, ...]:
    if isinstance(conn, int):
        return ("fd",)
    return (conn.version(), conn.alpn(), conn.server_name(),
            conn.peer_cert_der() == PKI.client.der)


async def wait_until(pred: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for the event itself; the deadline only bounds a hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 6), st.integers(0, 3), st.integers(0, 3), st.integers(0, 2),
       st.booleans())
def test_acceptor_builds_agree(good: int, garbage: int, leavers: int, stalled: int,
                               tls: bool) -> None:
    seen = each_build(accepting(good, garbage, leavers, stalled, tls))
    st_ = seen["stats"]
    total = good + garbage + leavers + stalled
    handed = good if tls else total  # without TLS every connection is handed at once
    assert st_.accepted == total and st_.handed == handed == len(seen["handed"])
    assert seen["closed"]
    if tls:
        assert all(h == ("TLSv1.3", "mwi-postgres", "proxy.mwi.test", True)
                   for h in seen["handed"])
        assert st_.handshake_timeouts == stalled


# -- Acceptor: pause, resume and the caps in plain mode ------------------------------------

def pausing(early: int, toggles: int, releases: int, late: int, caps: tuple[int, int],
            unix: bool, tmp: str) -> Scenario:
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if unix:
            path = f"{tmp}/{mod.__name__.rsplit('.', 1)[-1]}.sock"
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen(64)
        else:
            srv = socket.create_server(("127.0.0.1", 0), backlog=64)
        handed: list[Any] = []
        acc = mod.Acceptor(loop, srv, handed.append, limits=caps)
        acc.pause()

        def dial() -> socket.socket:
            if unix:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            return socket.create_connection(srv.getsockname())

        clients = [dial() for _ in range(early)]
        for i in range(toggles):
            acc.resume() if i % 2 else acc.pause()
        acc.resume()

        def settled(n: int) -> bool:  # every connection taken, and what it gave delivered
            st_ = acc.stats()
            fds = sum(isinstance(h, int) for h in handed)
            return st_.accepted == n and fds == st_.handed and \
                (st_.capped == 0) == (fds == len(handed))

        await wait_until(lambda: settled(early))
        source = "local" if unix else "127.0.0.1"
        fds = [h for h in handed if isinstance(h, int)]
        for _ in range(min(releases, len(fds))):
            acc.release(source)
        clients += [dial() for _ in range(late)]
        await wait_until(lambda: settled(early + late))
        st_ = acc.stats()
        now = time.monotonic()
        seen = {"stats": (st_.accepted, st_.handed, st_.capped, st_.pending),
                "capped_source": st_.capped_source,
                # the acceptor's timestamps: on time.monotonic()'s clock, in order
                "timed": all(0 < h.accepted_at <= h.ready_at <= now
                             for h in handed if not isinstance(h, int)),
                "fds": sum(isinstance(h, int) for h in handed),
                "notices": [(h.outcome, h.source) for h in handed if not isinstance(h, int)],
                "paused": acc.paused}
        acc.close()
        for h in handed:
            if isinstance(h, int):
                socket.socket(fileno=h).close()
        for c in clients:
            c.close()
        srv.close()
        return seen

    return scenario


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 8), st.integers(0, 4), st.integers(0, 3), st.integers(0, 5),
       st.tuples(st.integers(1, 6), st.integers(1, 6)).map(lambda t: (max(t), min(t))),
       st.booleans())
def test_acceptor_pause_and_caps_builds_agree(early: int, toggles: int, releases: int,
                                              late: int, caps: tuple[int, int],
                                              unix: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        seen = each_build(pausing(early, toggles, releases, late, caps, unix, tmp))
    room = caps[1]  # one source: the per-source cap binds
    first = min(early, room)
    released = min(releases, first)
    second = min(late, room - first + released)
    assert seen["stats"] == (early + late, first + second, early + late - first - second,
                             first - released + second)
    assert seen["fds"] == first + second and not seen["paused"]
    # one source: over the per-source cap, unless it is the total one as well
    assert seen["capped_source"] == (seen["stats"][2] if caps[1] < caps[0] else 0)
    assert seen["timed"]
    assert seen["notices"] == ([("capped", "local" if unix else "127.0.0.1")]
                               if early + late > first + second else [])


def granting(slots: int, callers: int, more: int) -> Scenario:
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        srv = socket.create_server(("127.0.0.1", 0), backlog=64)
        handed: list[int] = []
        acc = mod.Acceptor(loop, srv, handed.append)
        acc.grant(slots)
        clients = [socket.create_connection(srv.getsockname()) for _ in range(callers)]
        first = min(slots, callers)
        await wait_until(lambda: len(handed) == first)
        await asyncio.sleep(0.1)  # out of slots: the rest stay in the backlog
        seen: dict[str, Any] = {"first": (acc.stats().accepted, len(handed))}
        acc.grant(more)
        await wait_until(lambda: len(handed) == min(slots + more, callers))
        await asyncio.sleep(0.1)
        seen["then"] = (acc.stats().accepted, len(handed))
        acc.close()
        for fd in handed:
            socket.socket(fileno=fd).close()
        for c in clients:
            c.close()
        srv.close()
        return seen

    return scenario


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4), st.integers(0, 8), st.integers(0, 4))
def test_acceptor_grant_builds_agree(slots: int, callers: int, more: int) -> None:
    seen = each_build(granting(slots, callers, more))
    first, then = min(slots, callers), min(slots + more, callers)
    assert seen == {"first": (first, first), "then": (then, then)}
