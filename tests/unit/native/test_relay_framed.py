"""The `-ping` framing inside the relay, both builds: deframing (keepalives dropped,
frames split anywhere, a frame bigger than any buffer), framing (one frame per chunk, a
framed farewell), the hand-over of a deframer stopped mid-header or mid-payload, a
truncated frame as a reset, keepalives from the relay to an idle framed side, and a
framed TLS side."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF, REASON_RESET_A, Framing
from mwiproxy.wire import ping

from .relaykit import FAREWELL, Joined, recv_all, run
from .tlskit import plain_pair


async def deframed(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int,
                   deframer: ping.Deframer) -> bytes:
    """n payload bytes read from a framed end."""
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, 1 << 16)
        assert chunk, f"ended after {len(out)} of {n} payload bytes"
        out += deframer.feed(chunk)
    return out


async def until_keepalives(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                           deframer: ping.Deframer, count: int) -> bytes:
    """Read until `count` more keepalives came (bounded by the test's timeout): the
    payload seen meanwhile."""
    target, payload = deframer.keepalives + count, b""
    while deframer.keepalives < target:
        chunk = await loop.sock_recv(sock, 1 << 16)
        assert chunk, "ended while waiting for keepalives"
        payload += deframer.feed(chunk)
    return payload


def test_reads_are_deframed_whatever_the_split(relay_mod: Any) -> None:
    payloads = [b"select 1", b"", b"x" * 70_000, b"tail"]
    stream = b"".join(ping.KEEPALIVE + ping.frame(p) for p in payloads)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing())
        j.relay.start()
        want = b"".join(payloads)
        # byte by byte through the headers, then the rest in uneven slices
        for k in range(12):
            await loop.sock_sendall(j.a, stream[k:k + 1])
        for k in range(12, len(stream), 9_999):
            await loop.sock_sendall(j.a, stream[k:k + 9_999])
        assert await recv_all(loop, j.b, len(want)) == want
        await loop.sock_sendall(j.b, b"row")
        d = ping.Deframer()
        assert await deframed(loop, j.a, 3, d) == b"row"
        j.a.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, j.b) == b""
        j.b.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, j.a) == b""
        assert await j.done == REASON_EOF
        assert tuple(j.relay.stats()[:2]) == (len(want), 3)  # payload only
        j.close()

    run(body)


def test_each_chunk_written_is_one_frame_and_a_farewell_is_framed(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing())
        j.relay.start()
        await loop.sock_sendall(j.b, b"first")
        raw = await recv_all(loop, j.a, 9)
        assert raw == ping.frame(b"first")
        big = bytes(range(256)) * 4096  # 1 MiB: many chunks, each its own frame
        d = ping.Deframer()
        _, got = await asyncio.gather(loop.sock_sendall(j.b, big), deframed(loop, j.a, len(big), d))
        assert got == big and d.keepalives == 0
        j.relay.close(FAREWELL)
        rest = await recv_all(loop, j.a)
        assert rest == ping.frame(FAREWELL)
        assert await j.done == REASON_CLOSED
        j.close()

    run(body)


@pytest.mark.parametrize("state", ["header", "payload"])
def test_the_setup_deframer_state_is_taken_over(relay_mod: Any, state: str) -> None:
    """The setup phase stopped inside a header or inside a payload: nothing is lost or
    doubled, and the frames after it are read normally."""
    frame = ping.frame(b"hello world")
    framing = Framing(header=frame[:2]) if state == "header" else Framing(payload_left=5)
    rest = frame[2:] if state == "header" else b"world"
    want = b"hello world" if state == "header" else b"world"

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=framing)
        j.relay.start()
        await loop.sock_sendall(j.a, rest + ping.KEEPALIVE + ping.frame(b"!"))
        assert await recv_all(loop, j.b, len(want) + 1) == want + b"!"
        j.close()
        await j.done

    run(body)


@pytest.mark.parametrize("cut", [2, 7])  # inside the header, inside the payload
def test_a_stream_ending_inside_a_frame_is_a_reset(relay_mod: Any, cut: int) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing())
        j.relay.start()
        await loop.sock_sendall(j.a, ping.frame(b"whole") + ping.frame(b"hello")[:cut])
        j.a.shutdown(socket.SHUT_WR)
        assert await j.done == REASON_RESET_A
        got = b""
        try:
            got = await recv_all(loop, j.b)
        except ConnectionResetError:
            pass  # the reset is passed on: what was delivered before may be lost with it
        assert b"whole".startswith(got[:5])
        j.close()

    run(body)


def test_an_idle_framed_side_gets_keepalives_and_a_busy_one_frames_only(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing(keepalive=0.05))
        j.relay.start()
        d = ping.Deframer()
        assert await until_keepalives(loop, j.a, d, 3) == b""  # idle: keepalives only
        await loop.sock_sendall(j.b, b"reply")
        assert await deframed(loop, j.a, 5, d) == b"reply"
        j.b.setblocking(False)
        with pytest.raises(BlockingIOError):  # none toward the unframed side
            j.b.recv(10)
        # the worker counts a chunk once its write returned: the reader may be faster
        for _ in range(1000):
            if tuple(j.relay.stats()[:2]) == (0, 5):
                break
            await asyncio.sleep(0.01)
        assert tuple(j.relay.stats()[:2]) == (0, 5)
        j.relay.close()
        assert await j.done == REASON_CLOSED
        j.close()

    run(body)


def test_both_sides_framed_reframe_every_chunk(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing(), framed_b=Framing())
        j.relay.start()
        payload = b"p" * 200_000
        stream = ping.frame(payload[:7]) + ping.KEEPALIVE + ping.frame(payload[7:])
        d = ping.Deframer()
        _, got = await asyncio.gather(loop.sock_sendall(j.a, stream),
                                      deframed(loop, j.b, len(payload), d))
        assert got == payload and d.keepalives == 0  # no empty frame is ever made
        j.close()
        await j.done

    run(body)


def test_a_framed_tls_side(tls_mod: Any, pki: Any) -> None:
    """Framing on the plaintext of a TLS side, read by an independent TLS stack."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        from .relaykit import tcp_pair
        c, s = tcp_pair()
        server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
        client = pki.stdlib_client().wrap_socket(c, server_hostname="proxy.mwi.test",
                                                  do_handshake_on_connect=False)
        hs = asyncio.ensure_future(asyncio.to_thread(client.do_handshake))
        await server.handshake()
        await hs
        plain, inner = plain_pair()
        done: asyncio.Future[str] = loop.create_future()
        relay = tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result,
                              framed_a=Framing(keepalive=0.05))
        relay.start()
        await asyncio.to_thread(client.sendall, ping.KEEPALIVE + ping.frame(b"query"))
        assert await recv_all(loop, plain, 5) == b"query"
        await loop.sock_sendall(plain, b"answer")
        d = ping.Deframer()

        def read_framed() -> bytes:
            got = b""
            while len(got) < 6 or d.keepalives < 2:
                chunk = client.recv(1 << 16)
                assert chunk
                got += d.feed(chunk)
            return got

        assert await asyncio.to_thread(read_framed) == b"answer"
        relay.close(FAREWELL)
        rest = b""
        while chunk := await asyncio.to_thread(client.recv, 1 << 16):
            rest += d.feed(chunk)
        assert rest == FAREWELL
        assert await done == REASON_CLOSED
        client.close()
        plain.close()

    run(body)


def test_a_framing_state_is_checked(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        for bad in (Framing(header=b"1234"), Framing(header=b"1", payload_left=3)):
            with pytest.raises(ValueError):
                relay_mod.Relay(loop, a.fileno(), b.fileno(), framed_a=bad)
        a.close()
        b.close()

    run(body)
