"""Native-engine specifics: the recv/send fallback, tiny pipes and buffers, engine close."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF

from .relaykit import Joined, recv_all, run

_relay = pytest.importorskip("mwiproxy._native._relay", reason="extension not built")
pytestmark = pytest.mark.native_only


@pytest.mark.parametrize(
    "config",
    [
        {"use_splice": False, "buf_size": 1000},
        {"use_splice": True, "pipe_size": 4096, "pool_max": 1},
        {"use_splice": False, "buf_size": 65536, "pool_max": 1},
    ],
    ids=["buffers-1000", "pipes-4k", "buffers-64k"],
)
def test_byte_exact_with_engine_config(config: dict[str, object]) -> None:
    size = 6 * 1024 * 1024

    async def body() -> None:
        loop = asyncio.get_running_loop()
        _relay.engine_for(loop, **config)
        j = Joined(_relay.Relay, loop)
        j.relay.start()
        up, down = random.randbytes(size), random.randbytes(size // 2)

        async def send(sock: socket.socket, data: bytes) -> None:
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

        _, _, got_b, got_a = await asyncio.gather(
            send(j.a, up), send(j.b, down), recv_all(loop, j.b), recv_all(loop, j.a))
        assert hashlib.sha256(got_b).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_a).digest() == hashlib.sha256(down).digest()
        assert await j.done == REASON_EOF
        j.close()

    run(body)


def test_engine_close_ends_running_relays() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        joined = [Joined(_relay.Relay, loop) for _ in range(5)]
        for j in joined:
            j.relay.start()
        await loop.sock_sendall(joined[0].a, b"abc")
        assert await recv_all(loop, joined[0].b, 3) == b"abc"
        assert sum(e.relays_running for e in _relay.engines_for(loop)) == 5
        _relay.close_engine(loop)
        for j in joined:
            assert j.relay.reason == REASON_CLOSED and await j.done == REASON_CLOSED
            assert await recv_all(loop, j.b) == b""
            j.close()
        assert joined[0].relay.stats().bytes_a_to_b == 3

    run(body)


def test_on_done_errors_reach_the_loop_handler() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        a, b = socket.socketpair()

        def boom(reason: str) -> None:
            raise RuntimeError(reason)

        relay = _relay.Relay(loop, a.detach(), b.detach(), on_done=boom)
        relay.start()
        relay.close()
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert isinstance(seen[0]["exception"], RuntimeError)

    run(body)
