"""The verdicts with bytes on a held message (Relay.answer, Relay.resume(replacement)),
both builds, plain, `-ping` framed and TLS side A: an answer reaches A (in its framing
and TLS) behind what B already sent and the session goes on; a replacement reaches B in
the held message's place; neither is counted as B's or A's bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mwiproxy._native import REASON_EOF, Framing
from mwiproxy.wire import ping

from .relaykit import Joined, recv_all, run
from .test_relay_inspect import AUTH, GET, HELLO, Held, _op_msg

ERR = b"-ERR AUTH is refused here\r\n"
OK = b"+OK\r\n"


@pytest.mark.parametrize("framed", [False, True], ids=["plain", "framed"])
def test_an_answered_message_is_dropped_and_the_session_goes_on(relay_mod: Any,
                                                                 framed: bool) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing() if framed else None,
                   inspect="resp", on_held=held)
        j.relay.start()
        send = ping.frame if framed else (lambda b: b)
        await loop.sock_sendall(j.a, send(GET + AUTH + GET))
        assert await held.next() == AUTH
        assert await recv_all(loop, j.b, len(GET)) == GET
        await loop.sock_sendall(j.b, OK)  # B's answer to the first GET
        assert await recv_all(loop, j.a, len(send(OK))) == send(OK)
        j.relay.answer(ERR)
        assert await recv_all(loop, j.b, len(GET)) == GET  # the GET after AUTH went on
        await loop.sock_sendall(j.b, OK)
        want = send(ERR) + send(OK)
        assert await recv_all(loop, j.a, len(want)) == want  # in order, each a frame
        await loop.sock_sendall(j.a, send(HELLO))  # the next held one: answered again
        assert await held.next() == HELLO
        j.relay.answer(memoryview(ERR))
        assert await recv_all(loop, j.a, len(send(ERR))) == send(ERR)
        j.a.shutdown(1)
        assert await recv_all(loop, j.b) == b""
        j.b.shutdown(1)
        assert await recv_all(loop, j.a) == b""
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        stats = j.relay.stats()
        assert (stats.bytes_a_to_b, stats.bytes_b_to_a) == (2 * len(GET), 2 * len(OK))
        assert held.messages == [AUTH, HELLO]
        j.close()

    run(body)


def test_a_replacement_goes_on_in_the_held_message_s_place(relay_mod: Any) -> None:
    other = b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n"

    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, inspect="resp", on_held=held)
        j.relay.start()
        await loop.sock_sendall(j.a, AUTH + GET)
        assert await held.next() == AUTH
        j.relay.resume(other)
        j.a.shutdown(1)
        assert await recv_all(loop, j.b) == other + GET
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        assert j.relay.stats().bytes_a_to_b == len(other + GET)
        j.close()

    run(body)


def test_verdicts_need_bytes_and_a_held_message(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, inspect="resp", on_held=held)
        j.relay.start()
        with pytest.raises(ValueError):
            j.relay.resume(b"")
        j.relay.answer(ERR)  # nothing held: nothing happens
        j.relay.resume(GET)
        await loop.sock_sendall(j.a, GET)
        j.a.shutdown(1)
        assert await recv_all(loop, j.b) == GET
        j.b.shutdown(1)
        assert await recv_all(loop, j.a) == b""  # no answer went to A
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        j.close()

    run(body)


def test_tls_side_a_gets_the_answer_inside_tls(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        from .relaykit import tcp_pair
        from .tlskit import plain_pair
        c, s = tcp_pair()
        server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
        client = pki.stdlib_client().wrap_socket(c, server_hostname="proxy.mwi.test",
                                                  do_handshake_on_connect=False)
        hs = asyncio.ensure_future(asyncio.to_thread(client.do_handshake))
        await server.handshake()
        await hs
        plain, inner = plain_pair()
        plain.setblocking(False)
        done: asyncio.Future[str] = loop.create_future()
        held = Held()
        relay = tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result,
                              inspect="resp", on_held=held)
        relay.start()
        await asyncio.to_thread(client.sendall, AUTH + GET)
        assert await held.next() == AUTH
        relay.answer(ERR)

        def read(n: int) -> bytes:
            got = b""
            while len(got) < n and (chunk := client.recv(1 << 16)):
                got += chunk
            return got

        assert await asyncio.to_thread(read, len(ERR)) == ERR
        assert await recv_all(loop, plain, len(GET)) == GET
        await loop.sock_sendall(plain, OK)
        assert await asyncio.to_thread(read, len(OK)) == OK
        relay.close()
        assert await done == "closed"
        client.close()
        plain.close()

    run(body)


def test_an_empty_answer_only_drops_the_message(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, framed_a=Framing(), inspect="resp", on_held=held)
        j.relay.start()
        await loop.sock_sendall(j.a, ping.frame(AUTH + GET))
        assert await held.next() == AUTH
        j.relay.answer(b"")
        assert await recv_all(loop, j.b, len(GET)) == GET
        await loop.sock_sendall(j.b, OK)
        assert await recv_all(loop, j.a, len(ping.frame(OK))) == ping.frame(OK)  # only
        j.a.shutdown(1)
        j.b.shutdown(1)
        assert await recv_all(loop, j.a) == b""
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        j.close()

    run(body)


def test_hold_all_holds_messages_that_would_pass(relay_mod: Any) -> None:
    find = _op_msg(b"find", b"app")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        held = Held()
        j = Joined(relay_mod.Relay, loop, inspect="mongodb", on_held=held,
                   inspect_allowed=("app",))
        j.relay.start()
        await loop.sock_sendall(j.a, find)
        assert await recv_all(loop, j.b, len(find)) == find  # natively, no word
        j.relay.hold_all()
        await asyncio.sleep(0.1)  # the worker takes the request
        await loop.sock_sendall(j.a, find)
        assert await held.next() == find
        j.relay.answer(ERR)
        assert await recv_all(loop, j.a, len(ERR)) == ERR
        j.a.shutdown(1)
        j.b.shutdown(1)
        assert await recv_all(loop, j.b) == b""
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        assert held.messages == [find]
        j.close()

    run(body)
