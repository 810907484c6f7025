"""The relay: native for plain sockets, asyncio copy otherwise; counters, half-close,
close() and idle timeout behave the same for callers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mwiproxy import _native
from mwiproxy.relay.pipe import Pipe


async def _pair() -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    return await asyncio.open_connection(sock=ours), theirs


async def _exchange(allow_native: bool) -> tuple[Pipe, bytes, bytes]:
    loop = asyncio.get_running_loop()
    (a, peer_a), (b, peer_b) = await _pair(), await _pair()
    pipe = Pipe(a, b, allow_native=allow_native)
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
    return pipe, bytes(got), back


@pytest.mark.parametrize("allow_native", [True, False])
def test_relay_both_ways_with_counters(allow_native):
    pipe, got, back = asyncio.run(_exchange(allow_native))
    assert got == b"x" * 3_000_000 and back == b"pong"
    assert pipe.stats.bytes_a_to_b == 3_000_000 and pipe.stats.bytes_b_to_a == 4


@pytest.mark.parametrize("allow_native", [True, False])
def test_close_cuts_both_sides(allow_native):
    async def main() -> str:
        loop = asyncio.get_running_loop()
        (a, peer_a), (b, peer_b) = await _pair(), await _pair()
        pipe = Pipe(a, b, allow_native=allow_native)
        task = asyncio.ensure_future(pipe.run())
        await asyncio.sleep(0.05)
        pipe.close("locked")
        stats = await asyncio.wait_for(task, 5)
        assert await loop.sock_recv(peer_a, 10) == b""
        assert await loop.sock_recv(peer_b, 10) == b""
        return stats.reason

    assert asyncio.run(main()) == "locked"


def test_idle_timeout_in_the_asyncio_copy():
    async def main() -> str:
        (a, _pa), (b, _pb) = await _pair(), await _pair()
        stats = await asyncio.wait_for(Pipe(a, b, idle_timeout=0.2, allow_native=False).run(), 5)
        return stats.reason

    assert asyncio.run(main()) == _native.REASON_IDLE_TIMEOUT
