"""TLS inside `-ping` framing inside TLS (TLSStream.wrap_inner(framing=)), both builds:
non-tunnel `-ping`, where a client's own TLS records travel in frames on the plaintext of
the local proxy's TLS. The records are deframed and framed under the inner TLS, and the
relay times keepalives that go on the outer connection between two records.

(Handshake, byte-exact relay, half-close and farewell run framed too: test_tls_inner.py's
`framed` parameter.)"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_RESET_A, Framing
from mwiproxy.wire import ping

from .innerkit import inner_pair
from .relaykit import FAREWELL, recv_all, run
from .tlskit import plain_pair


async def _relayed(mod: Any, pki: Any, keepalive: float | None, seed: int = 0
                   ) -> tuple[Any, Any, socket.socket, asyncio.Future[str]]:
    loop = asyncio.get_running_loop()
    server, client = await inner_pair(mod, pki, framed=True, seed=seed)
    plain, inner = plain_pair()
    done: asyncio.Future[str] = loop.create_future()
    relay = mod.Relay(loop, server, inner.detach(), on_done=done.set_result,
                      framed_a=Framing(keepalive))
    relay.start()
    return relay, client, plain, done


def test_keepalives_reach_an_idle_client_between_records(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki, keepalive=0.05)
        before = client.deframer.keepalives
        reader = asyncio.ensure_future(client.read())
        # idle: only keepalives arrive, each a whole empty frame on the outer connection
        await asyncio.wait_for(_wait(lambda: client.deframer.keepalives >= before + 3), 30)
        assert not reader.done()
        await loop.sock_sendall(plain, b"1 row")
        assert await asyncio.wait_for(reader, 30) == b"1 row"
        await client.write(b"next query")
        assert await recv_all(loop, plain, 10) == b"next query"
        relay.close(FAREWELL)
        assert await client.read_all() == FAREWELL and client.close_notify
        assert await done == REASON_CLOSED
        assert relay.stats()[:2] == (10, 5)  # payload only: no header, no keepalive
        assert not client.deframer.mid_frame
        client.outer.close()
        plain.close()

    run(body)


async def _wait(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)


def test_keepalives_never_land_inside_a_frame_while_the_client_is_slow(
        tls_mod: Any, pki: Any) -> None:
    """The client reads nothing while a flood comes its way, so the outer connection
    blocks mid-frame, and the keepalive timer fires all along (every millisecond): no
    keepalive goes while a frame is on its way (whether one goes between two frames is
    timing), so the client deframes every record whole and gets every byte in order.
    The pending states themselves (a keepalive or a frame left half-written by a full
    socket) are driven one by one in csrc/fuzz/stress_tls_framed.c."""
    flood = random.randbytes(8 << 20)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki, keepalive=0.001)
        send = asyncio.ensure_future(loop.sock_sendall(plain, flood))
        await asyncio.sleep(0.3)  # let the outer socket fill up while the timer fires
        got = await client.read_all(len(flood))
        await send
        assert hashlib.sha256(got).digest() == hashlib.sha256(flood).digest()
        assert not client.deframer.mid_frame
        relay.close()
        assert await done == REASON_CLOSED
        client.outer.close()
        plain.close()

    run(body, timeout=120)


@pytest.mark.parametrize("cut", [1, 3, 4, 6, 12])
def test_a_frame_cut_short_is_a_reset(tls_mod: Any, pki: Any, cut: int) -> None:
    """The outer stream ends (close_notify and FIN) inside a frame, in its header or in
    its payload (the start of a record): the client's stream was cut, not closed."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        relay, client, plain, done = await _relayed(tls_mod, pki, keepalive=None)
        await client.write(b"query")
        assert await recv_all(loop, plain, 5) == b"query"
        record_start = b"\x17\x03\x03\x00\x40" + b"\x00" * 20  # a record of 64 bytes...
        await client.outer.write(ping.frame(record_start)[:cut])  # ...in a frame cut short
        await client.outer.aclose()
        assert await asyncio.wait_for(done, 30) == REASON_RESET_A
        plain.close()

    run(body)


@pytest.mark.parametrize("cut", [2, 4, 6, 8, 20, 300])
def test_the_setup_deframer_state_is_taken_over(tls_mod: Any, pki: Any, cut: int) -> None:
    """The setup phase read the framed stream up to anywhere (in the keepalive, in the
    ClientHello's header, in its payload): the inner TLS goes on from exactly there, no
    byte lost or doubled, and the handshake completes."""
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki, framed=True, first_cut=cut)
        assert server.peer_cert_der() == pki.client.der
        await client.write(b"startup")
        assert await server.read(100) == b"startup"
        await server.write(b"ready")
        assert await client.read() == b"ready"
        server.close()
        client.outer.close()

    run(body)


def test_a_framed_tls_side_keeps_its_own_reading_state(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        server, client = await inner_pair(tls_mod, pki, framed=True)
        _plain, inner = plain_pair()
        with pytest.raises(ValueError, match="reading state"):
            tls_mod.Relay(asyncio.get_running_loop(), server, inner.fileno(),
                          framed_a=Framing(0.1, b"\x00"))
        server.close()
        inner.close()
        _plain.close()
        client.outer.close()

    run(body)
