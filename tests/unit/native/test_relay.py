"""The relay, both builds, with real sockets: bytes, half-close, resets, timeouts, scale."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import struct
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSE_TIMEOUT, REASON_CLOSED, REASON_EOF, REASON_IDLE_TIMEOUT

from .relaykit import FAREWELL, Joined, farewell_split, flood, open_fds, recv_all, run


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_echo_both_ways(relay_mod: Any, kind: str, loop_kind: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, kind)
        j.relay.start()
        for i in range(20):
            msg = b"ping %d" % i
            await loop.sock_sendall(j.a, msg)
            assert await recv_all(loop, j.b, len(msg)) == msg
            await loop.sock_sendall(j.b, msg.upper())
            assert await recv_all(loop, j.a, len(msg)) == msg.upper()
        j.a.shutdown(socket.SHUT_WR)
        j.b.shutdown(socket.SHUT_WR)
        assert await j.done == REASON_EOF
        # read once finished: the worker counts a chunk after its send returns, so a
        # receiver can hold the bytes a moment before the counter does
        st = j.relay.stats()
        assert (st.bytes_a_to_b, st.bytes_b_to_a) == (sum(len(b"ping %d" % i) for i in range(20)),) * 2
        assert st.chunks_a_to_b >= 1 and st.chunks_b_to_a >= 1
        assert j.relay.done and j.relay.reason == REASON_EOF
        j.close()

    run(body, loop=loop_kind)


def test_large_transfer_both_ways_is_byte_exact(relay_mod: Any) -> None:
    size = 24 * 1024 * 1024

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        up, down = random.randbytes(size), random.randbytes(size // 3)

        async def send(sock: socket.socket, data: bytes) -> None:
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

        _, _, got_b, got_a = await asyncio.gather(
            send(j.a, up), send(j.b, down), recv_all(loop, j.b), recv_all(loop, j.a))
        assert hashlib.sha256(got_b).digest() == hashlib.sha256(up).digest()
        assert got_a == down
        assert await j.done == REASON_EOF
        assert j.relay.stats()[:2] == (len(up), len(down))
        j.close()

    run(body)


def test_half_close_is_propagated_and_other_way_still_flows(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        await loop.sock_sendall(j.a, b"request")
        j.a.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, j.b) == b"request"  # EOF arrived after the data
        assert not j.done.done()
        await loop.sock_sendall(j.b, b"late reply")
        assert await recv_all(loop, j.a, 10) == b"late reply"
        j.b.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, j.a) == b""
        assert await j.done == REASON_EOF
        await asyncio.sleep(0.05)
        assert j.calls == 1
        j.close()

    run(body)


@pytest.mark.parametrize("side", ["a", "b"])
def test_peer_reset_is_reported_and_passed_on(relay_mod: Any, side: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        await loop.sock_sendall(j.a, b"x")
        assert await recv_all(loop, j.b, 1) == b"x"
        gone, survivor = (j.a, j.b) if side == "a" else (j.b, j.a)
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        assert await j.done == f"reset_{side}"
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(survivor, 100):
                pass
        survivor.close()

    run(body)


def test_idle_timeout(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, idle_timeout=0.3)
        j.relay.start()
        for _ in range(4):  # traffic keeps it alive past the timeout
            await asyncio.sleep(0.15)
            await loop.sock_sendall(j.a, b"k")
            assert await recv_all(loop, j.b, 1) == b"k"
        assert not j.done.done()
        t0 = loop.time()
        assert await j.done == REASON_IDLE_TIMEOUT
        assert 0.2 < loop.time() - t0 < 2.0
        assert await recv_all(loop, j.a) == b""
        j.close()

    run(body)


def test_close_timeout_after_half_close(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, idle_timeout=30, close_timeout=0.2)
        j.relay.start()
        j.a.shutdown(socket.SHUT_WR)
        assert await j.done == REASON_CLOSE_TIMEOUT
        j.close()

    run(body)


def test_close_from_python(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        j.relay.close()
        assert await j.done == REASON_CLOSED
        assert await recv_all(loop, j.b) == b""
        j.relay.close()  # idempotent
        j.close()

    run(body)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_close_with_a_farewell_while_idle(relay_mod: Any, kind: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, kind)
        j.relay.start()
        await loop.sock_sendall(j.b, b"ready")
        assert await recv_all(loop, j.a, 5) == b"ready"
        await loop.sock_sendall(j.a, b"select 1")  # never read by the relay: no RST for it
        j.relay.close(FAREWELL)
        j.relay.close(b"second farewell")  # the first one is said, once
        assert await recv_all(loop, j.a) == FAREWELL  # then EOF
        assert await j.done == REASON_CLOSED
        assert j.relay.stats().bytes_b_to_a == 5  # B's bytes only
        assert await recv_all(loop, j.b) in (b"", b"select 1")
        j.close()

    run(body)


def test_close_with_a_farewell_mid_stream_keeps_it_whole(relay_mod: Any) -> None:
    """B streams to A; the farewell comes after a prefix of that stream, never inside it."""
    bulk = random.randbytes(64 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()

        async def send() -> None:
            with contextlib.suppress(OSError):  # the relay cuts B mid-send
                await loop.sock_sendall(j.b, bulk)

        sender = asyncio.ensure_future(send())
        got = bytearray()
        while len(got) < 1 << 20:
            got += await loop.sock_recv(j.a, 65536)
        j.relay.close(FAREWELL)
        got += await recv_all(loop, j.a)
        k, m = farewell_split(bytes(got), bulk)
        assert m == len(FAREWELL) and 1 << 20 <= k < len(bulk)
        assert await j.done == REASON_CLOSED
        assert j.relay.stats().bytes_b_to_a == k
        await asyncio.wait_for(sender, 10)
        j.close()

    run(body)


def test_close_with_a_farewell_is_bounded_when_a_reads_nothing(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop, close_timeout=0.3)
        j.relay.start()
        sent = await flood(j.b, os.urandom(65536))  # A's buffers and the relay's are full
        big = FAREWELL * 50_000  # 4 MB: cannot slip into what the kernel frees meanwhile
        t0 = loop.time()
        j.relay.close(big)
        assert await j.done == REASON_CLOSED
        assert 0.2 < loop.time() - t0 < 3.0
        _, said = farewell_split(await recv_all(loop, j.a), sent, big)  # still in order
        assert said < len(big)
        j.close()

    run(body)


def test_slow_reader_backpressure_bounds_what_is_buffered(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        chunk, sent = os.urandom(65536), 0
        for _ in range(2000):  # until A's kernel buffer is full: the relay stopped reading
            try:
                sent += j.a.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                try:
                    sent += j.a.send(chunk)
                except BlockingIOError:
                    break
        assert sent < 64 * 1024 * 1024, "relay kept reading a side whose peer was not"
        in_flight = j.relay.stats().bytes_a_to_b
        assert in_flight <= sent
        j.a.shutdown(socket.SHUT_WR)
        got = await recv_all(loop, j.b)
        assert len(got) == sent and got[:65536] == chunk
        j.b.shutdown(socket.SHUT_WR)
        assert await j.done == REASON_EOF
        j.close()

    run(body)


def test_start_rejects_non_sockets(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        relay = relay_mod.Relay(loop, r, w)
        with pytest.raises(OSError):
            relay.start()
        relay.close()

    run(body)


def test_bad_arguments(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError):
            relay_mod.Relay(loop, 5, 5)
        with pytest.raises(ValueError):
            relay_mod.Relay(loop, 3, 4, idle_timeout=-1)

    run(body)


def test_many_concurrent_relays_and_no_fd_leak(relay_mod: Any) -> None:
    count = 500

    async def body() -> None:
        loop = asyncio.get_running_loop()
        joined = [Joined(relay_mod.Relay, loop, "unix") for _ in range(count)]
        for j in joined:
            j.relay.start()

        async def exchange(i: int, j: Joined) -> str:
            msg = b"relay %d " % i * 10
            await loop.sock_sendall(j.a, msg)
            assert await recv_all(loop, j.b, len(msg)) == msg
            await loop.sock_sendall(j.b, msg)
            assert await recv_all(loop, j.a, len(msg)) == msg
            j.a.shutdown(socket.SHUT_WR)
            j.b.shutdown(socket.SHUT_WR)
            return await j.done

        reasons = await asyncio.gather(*(exchange(i, j) for i, j in enumerate(joined)))
        assert reasons == [REASON_EOF] * count
        for j in joined:
            j.close()
        relay_mod.close_engine(loop)

    before = open_fds()
    run(body)
    assert open_fds() - before == set()


def test_never_started_relay_closes_its_fds(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        fds = {a.fileno(), b.fileno()}
        relay = relay_mod.Relay(loop, a.detach(), b.detach())
        relay.close()
        del relay
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)

    run(body)
