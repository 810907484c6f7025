"""A TLS side's records arriving cut anywhere (a header in pieces, a record split across
segments, several records and the close_notify in one segment), both builds: the relay
that stops reading once a short recv drained the socket (mwi_tls_read_drained) still
delivers every byte, in order, and the end."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from typing import Any

from mwiproxy._native import REASON_EOF

from .relaykit import recv_all, run, tcp_pair
from .tlskit import plain_pair


class WireClient:
    """A stdlib TLS client over memory BIOs on a blocking socket: its records are bytes the
    test sends cut wherever it likes."""

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_hostname="proxy.mwi.test")

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outb.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.inb.write(data)
        self.sock.sendall(self.outb.read())

    def records(self, *payloads: bytes, close: bool = False) -> bytes:
        """The wire bytes of one record per payload (each under 16 KiB), then the
        close_notify if `close`."""
        for p in payloads:
            self.obj.write(p)
        if close:
            try:
                self.obj.unwrap()
            except ssl.SSLWantReadError:
                pass  # ours is written; theirs is not awaited
        return self.outb.read()


async def tls_side_to_plain(tls_mod: Any, pki: Any) -> tuple[WireClient, socket.socket, Any,
                                                              asyncio.Future[str]]:
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
    client = WireClient(pki.stdlib_client(), c)
    await asyncio.gather(server.handshake(), asyncio.to_thread(client.handshake))
    plain, inner = plain_pair()
    done: asyncio.Future[str] = loop.create_future()
    relay = tls_mod.Relay(loop, server, inner.detach(), on_done=done.set_result)
    relay.start()
    return client, plain, relay, done


def test_records_cut_anywhere_arrive_whole_and_in_order(tls_mod: Any, pki: Any) -> None:
    rnd = random.Random(13)
    payloads = [rnd.randbytes(rnd.choice((1, 7, 200, 5000, 16384))) for _ in range(40)]
    expected = b"".join(payloads)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        client, plain, relay, done = await tls_side_to_plain(tls_mod, pki)
        wire = client.records(*payloads, close=True)

        def send_cut() -> None:
            # a header in pieces, records split and joined: pauses let each piece be read
            # alone (a short recv), and the rest must still come
            cuts = sorted({1, 3, 5, 6, *(rnd.randrange(len(wire)) for _ in range(30))})
            start = 0
            for cut in [*cuts, len(wire)]:
                client.sock.sendall(wire[start:cut])
                start = cut
                time.sleep(0.005)
            client.sock.shutdown(socket.SHUT_WR)

        _, got = await asyncio.gather(asyncio.to_thread(send_cut),
                                      recv_all(loop, plain, len(expected) + 1))
        assert got == expected
        assert await recv_all(loop, plain) == b""  # the close_notify: end of stream
        plain.shutdown(socket.SHUT_WR)
        assert await done == REASON_EOF
        assert relay.stats()[0] == len(expected)
        plain.close()
        client.sock.close()

    run(body)


def test_request_reply_one_record_each_way_many_times(tls_mod: Any, pki: Any) -> None:
    """The bench's traffic: one small record at a time, each read alone (it drains the
    socket), many times over."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        client, plain, relay, done = await tls_side_to_plain(tls_mod, pki)

        def requests() -> None:
            for i in range(300):
                client.sock.sendall(client.records(b"GET key:%d\r\n" % i))

        want = b"".join(b"GET key:%d\r\n" % i for i in range(300))
        _, got = await asyncio.gather(asyncio.to_thread(requests),
                                      recv_all(loop, plain, len(want)))
        assert got == want
        client.sock.sendall(client.records(b"last", close=True))
        client.sock.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, plain) == b"last"
        plain.shutdown(socket.SHUT_WR)
        assert await done == REASON_EOF
        plain.close()
        client.sock.close()

    run(body)
