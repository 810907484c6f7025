"""Relay(inspect=..., on_held=...), both builds, below Pipe: side A's messages framed
after `-ping` deframing and after TLS, held ones reported with their exact bytes,
resume() and close(reason=...), and the arguments an inspected relay refuses."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from mwiproxy._native import REASON_EOF, REASON_REFUSED, Framing
from mwiproxy.wire import ping

from .relaykit import Joined, recv_all, run
from .tlskit import plain_pair

GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
AUTH = b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"
HELLO = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
BYE = b"-ERR AUTH is refused here\r\n"


class Held:
    """on_held for a test: the messages, and an event per message."""

    def __init__(self) -> None:
        self.messages: list[bytes | None] = []
        self.came = asyncio.Event()

    def __call__(self, message: bytes | None) -> None:
        self.messages.append(message)
        self.came.set()

    async def next(self) -> bytes | None:
        await asyncio.wait_for(self.came.wait(), 10)
        self.came.clear()
        return self.messages[-1]


def test_framed_side_a_is_inspected_after_deframing(relay_mod: Any) -> None:
    stream = GET + AUTH + GET + HELLO + GET
    # frames cut through the commands, keepalives between them
    frames = b"".join(ping.KEEPALIVE + ping.frame(stream[i:i + 11])
                      for i in range(0, len(stream), 11))

    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing(), inspect="resp", on_held=held)
        j.relay.start()
        await loop.sock_sendall(j.a, frames)
        assert await held.next() == AUTH
        assert await recv_all(loop, j.b, len(GET)) == GET  # what came before it went on
        assert j.relay.stats().bytes_a_to_b == len(GET)
        j.relay.resume()
        assert await held.next() == HELLO
        j.relay.resume()
        j.relay.resume()  # nothing held: nothing happens
        j.a.shutdown(1)
        assert await recv_all(loop, j.b) == stream[len(GET):]
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        assert j.relay.stats().bytes_a_to_b == len(stream)
        j.close()

    run(body)


def test_tls_side_a_refused_gets_the_farewell_inside_tls(tls_mod: Any, pki: Any) -> None:
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
        held = Held()
        relay = tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result,
                              inspect="resp", on_held=held)
        relay.start()
        await asyncio.to_thread(client.sendall, GET + GET + AUTH + GET)
        assert await held.next() == AUTH
        assert await recv_all(loop, plain, 2 * len(GET)) == GET + GET
        relay.close(BYE, reason=REASON_REFUSED)

        def read_all() -> bytes:
            got = b""
            while chunk := client.recv(1 << 16):
                got += chunk
            return got

        assert await asyncio.to_thread(read_all) == BYE
        assert await done == REASON_REFUSED
        assert await recv_all(loop, plain) == b""  # neither AUTH nor the GET after it
        client.close()
        plain.close()

    run(body)


def test_resume_while_side_b_is_full_keeps_the_order(relay_mod: Any) -> None:
    """A resume that comes while what preceded the held message still waits for B:
    that goes first, then the message, then the rest."""
    value = b"v" * 50_000
    stream = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value)
    stream += AUTH + GET

    async def body() -> None:
        loop = asyncio.get_running_loop()
        a, inner_a = socket.socketpair()
        inner_b, b = socket.socketpair()
        inner_b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # B fills at once
        for s in (a, b):
            s.setblocking(False)
        held = Held()
        done: asyncio.Future[str] = loop.create_future()

        def resume_at_once(message: bytes | None) -> None:
            held(message)
            relay.resume()

        relay = relay_mod.Relay(loop, inner_a.detach(), inner_b.detach(),
                                on_done=done.set_result, inspect="resp",
                                on_held=resume_at_once)
        relay.start()
        await loop.sock_sendall(a, stream)  # one read takes it all, AUTH included
        assert await held.next() == AUTH
        a.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, b) == stream
        b.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(done, 10) == REASON_EOF
        a.close()
        b.close()

    run(body)


@pytest.mark.parametrize("kw", [
    {"inspect": "postgres"},
    {"inspect": "resp", "on_held": None},
    {"inspect": "mysql", "framed_b": Framing()},
    {"inspect": "mongodb", "inspect_allowed": ("a\0b",)},
    {"inspect": "mongodb", "inspect_allowed": ("",)},
    {"inspect": "mongodb", "inspect_max_message": 15},
], ids=["unknown-protocol", "no-on-held", "framed-b", "nul-in-db", "empty-db", "max-15"])
def test_an_inspected_relay_refuses_what_it_cannot_do(relay_mod: Any, kw: dict[str, Any]
                                                      ) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        args = {"on_held": print, **kw}
        with pytest.raises(ValueError):
            Joined(relay_mod.Relay, loop, **args)

    run(body)


def test_close_reasons_are_checked(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        with pytest.raises(ValueError):
            j.relay.close(b"", reason="eof")
        j.relay.close(reason=REASON_REFUSED)
        assert await asyncio.wait_for(j.done, 10) == REASON_REFUSED
        j.close()

    run(body)


def _op_msg(command: bytes, db: bytes, extra: bytes = b"") -> bytes:
    """An OP_MSG {command: 1, $db: db} with `extra` as a document sequence after it."""
    elements = b"\x10" + command + b"\0\1\0\0\0" + b"\x02$db\0" + \
        struct.pack("<i", len(db) + 1) + db + b"\0"
    doc = struct.pack("<i", len(elements) + 5) + elements + b"\0"
    seq = b"" if not extra else b"\x01" + struct.pack("<i", len(extra) + 6) + b"docs\0" + extra
    body = struct.pack("<I", 0) + b"\0" + doc + seq
    return struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body


def test_mongodb_passes_natively_across_frames_and_holds_the_rest(relay_mod: Any) -> None:
    find, other = _op_msg(b"find", b"app"), _op_msg(b"find", b"admin")
    big = _op_msg(b"insert", b"app", struct.pack("<i", 300_005) + b"\x05" * 300_000 + b"\0")
    stream = find + big + other + find
    frames = b"".join(ping.KEEPALIVE + ping.frame(stream[i:i + 4001])
                      for i in range(0, len(stream), 4001))

    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing(), inspect="mongodb",
                   on_held=held, inspect_allowed=("app",))
        j.relay.start()
        sender = asyncio.ensure_future(loop.sock_sendall(j.a, frames))
        await asyncio.sleep(0.2)  # side b reads nothing yet: the relay waits on it
        assert await recv_all(loop, j.b, len(find + big)) == find + big
        assert await held.next() == other
        assert held.messages == [other]  # the passing ones never came to Python
        j.relay.resume()
        await sender
        j.a.shutdown(1)
        assert await recv_all(loop, j.b) == other + find
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        assert j.relay.stats().bytes_a_to_b == len(stream)
        j.close()

    run(body)
