"""Pipe(inspect=...): the relay frames side a's messages (Redis RESP, MySQL packets) and
holds the few that can switch the user or database for a verdict from Python. Runs
against the build in use (the compiled relay, or its pure twin with
MWIPROXY_NO_EXTENSIONS=1)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from mwiproxy import _native
from mwiproxy.relay.pipe import Inspect, Pipe
from mwiproxy.relay.streams import SocketStream

GETS = [b"*2\r\n$3\r\nGET\r\n$2\r\nk%d\r\n" % i for i in range(5)]
AUTH = b"*3\r\n$4\r\nAuTh\r\n$4\r\nuser\r\n$6\r\nsecret\r\n"
DENIED = b"-ERR AUTH is not allowed through this proxy\r\n"
BROKEN = b"-ERR Protocol error: the proxy could not frame this command\r\n"


class Session:
    """client <-> Pipe(inspect) <-> server, over socket pairs; the test plays both ends."""

    def __init__(self, protocol: str, decide: Callable[[bytes], Awaitable[bytes | None]],
                 allowed: tuple[str, ...] = ()):
        self.loop = asyncio.get_running_loop()
        ours_a, self.client = socket.socketpair()
        ours_b, self.server = socket.socketpair()
        for s in (self.client, self.server):
            s.setblocking(False)
        self.held: list[bytes] = []

        async def record(message: bytes) -> bytes | None:
            self.held.append(message)
            return await decide(message)

        self.pipe = Pipe(SocketStream(ours_a), SocketStream(ours_b),
                         inspect=Inspect(protocol, record, violation_farewell=BROKEN,
                                         allowed=allowed))
        self.task = asyncio.ensure_future(self.pipe.run())

    async def send(self, data: bytes, step: int = 0) -> None:
        if not step:
            await self.loop.sock_sendall(self.client, data)
            return
        for i in range(0, len(data), step):
            await self.loop.sock_sendall(self.client, data[i:i + step])
            await asyncio.sleep(0)

    async def server_reads(self, n: int) -> bytes:
        return await _read(self.loop, self.server, n)

    async def end(self) -> _native.RelayStats:
        """Client half-closes; the server reads all that is left, then closes."""
        self.client.shutdown(socket.SHUT_WR)
        rest = await _read(self.loop, self.server, None)
        self.server.close()
        await asyncio.wait_for(self.task, 10)
        self.client.close()
        self.rest = rest
        return self.pipe.stats


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int | None) -> bytes:
    out = bytearray()
    while n is None or len(out) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def _allow(message: bytes) -> None:
    return None


@pytest.mark.parametrize("step", [0, 1, 7], ids=["whole", "every-byte", "by-7"])
def test_resp_pipelined_auth_allowed_goes_through_in_order(step):
    stream = b"".join(GETS[:3]) + AUTH + b"PING\r\n" + b"".join(GETS[3:])

    async def main() -> None:
        s = Session("resp", _allow)
        await s.send(stream, step)
        stats = await s.end()
        assert s.rest == stream
        assert s.held == [AUTH, b"PING\r\n"]  # the exact bytes, case and all
        assert stats.reason == _native.REASON_EOF
        assert stats.bytes_a_to_b == len(stream)

    asyncio.run(main())


def test_resp_auth_refused_server_never_sees_it_nor_anything_after():
    before, after = b"".join(GETS[:2]), b"".join(GETS[2:])
    replies = b"$2\r\nv0\r\n$2\r\nv1\r\n"

    async def main() -> None:
        replied = asyncio.Event()

        async def refuse(message: bytes) -> bytes:
            await replied.wait()
            return DENIED

        s = Session("resp", refuse)
        await s.send(before + AUTH + after)
        assert await s.server_reads(len(before)) == before
        await s.loop.sock_sendall(s.server, replies)
        got = await _read(s.loop, s.client, len(replies))
        replied.set()
        got += await _read(s.loop, s.client, None)  # the farewell, then the end
        assert got == replies + DENIED
        stats = await asyncio.wait_for(s.task, 10)
        assert await _read(s.loop, s.server, None) == b""  # neither AUTH nor what followed
        assert stats.reason == _native.REASON_REFUSED
        assert stats.bytes_a_to_b == len(before)
        s.client.close()
        s.server.close()

    asyncio.run(main())


def test_resp_large_value_streams_without_being_held():
    value = bytes(range(256)) * 4096  # 1 MiB
    head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % len(value)

    async def main() -> None:
        s = Session("resp", _allow)
        half = len(value) // 2
        sender = asyncio.ensure_future(s.send(head + value[:half]))
        # the server gets the value's start before the client sent the rest: no buffering
        assert await s.server_reads(len(head) + half) == head + value[:half]
        await sender
        sender = asyncio.ensure_future(s.send(value[half:] + b"\r\n"))
        s.rest = await s.server_reads(len(value) - half + 2)
        await sender
        got = s.rest
        stats = await s.end()
        s.rest = got + s.rest
        assert s.rest == value[half:] + b"\r\n"
        assert s.held == []
        assert stats.bytes_a_to_b == len(head) + len(value) + 2

    asyncio.run(main())


@pytest.mark.parametrize("bad", [
    b"*2\r\n$3\r\nGET\r\n+k\r\n",  # an element that is not a bulk string
    b"*1\r\n$-1\r\n",  # a negative bulk length
    b"*x\r\n",  # a count that is not decimal
    b"*1\r\n$3\r\nGETxx",  # no \r\n after a bulk
    b"*1\r\n$%d\r\n" % (512 * 1024 * 1024 + 1),  # over Redis' bulk limit
], ids=["not-bulk", "negative", "not-decimal", "no-crlf", "too-long"])
def test_resp_broken_framing_ends_the_session(bad):
    async def main() -> None:
        s = Session("resp", _allow)
        await s.send(GETS[0] + bad + GETS[1])
        got = await _read(s.loop, s.client, None)
        stats = await asyncio.wait_for(s.task, 10)
        assert got == BROKEN
        assert stats.reason == _native.REASON_PROTOCOL
        rest = await _read(s.loop, s.server, None)
        assert rest.startswith(GETS[0]) and GETS[1] not in rest
        s.client.close()
        s.server.close()

    asyncio.run(main())


def test_held_message_over_the_limit_ends_the_session():
    secret = b"x" * _native.MAX_HELD
    big_auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)

    async def main() -> None:
        s = Session("resp", _allow)
        await s.send(GETS[0] + big_auth)
        assert await _read(s.loop, s.client, None) == BROKEN
        stats = await asyncio.wait_for(s.task, 10)
        assert stats.reason == _native.REASON_PROTOCOL and s.held == []
        assert await _read(s.loop, s.server, None) == GETS[0]
        s.client.close()
        s.server.close()

    asyncio.run(main())


def test_decide_raising_ends_the_session_as_error_without_farewell():
    async def broken(message: bytes) -> bytes | None:
        raise RuntimeError("policy store unreachable")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        s = Session("resp", broken)
        await s.send(AUTH + GETS[0])
        assert await _read(s.loop, s.client, None) == b""
        stats = await asyncio.wait_for(s.task, 10)
        assert stats.reason == _native.REASON_ERROR
        assert await _read(s.loop, s.server, None) == b""
        s.client.close()
        s.server.close()

    asyncio.run(main())


def _mysql(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def test_mysql_query_passes_init_db_is_held_change_user_refused():
    query = _mysql(0, b"\x03SELECT 1")
    init_db = _mysql(0, b"\x02otherdb")
    change_user = _mysql(0, b"\x11root\x00")
    err = _mysql(1, b"\xff\x0f\x04#HY000COM_CHANGE_USER is not allowed")

    async def main() -> None:
        async def decide(message: bytes) -> bytes | None:
            return err if message[4] == 0x11 else None

        s = Session("mysql", decide)
        await s.send(query + init_db + query, 3)
        assert await s.server_reads(len(query) * 2 + len(init_db)) == query + init_db + query
        await s.send(change_user + query)
        assert await _read(s.loop, s.client, None) == err
        stats = await asyncio.wait_for(s.task, 10)
        assert stats.reason == _native.REASON_REFUSED
        assert s.held == [init_db, change_user]
        assert await _read(s.loop, s.server, None) == b""
        s.client.close()
        s.server.close()

    asyncio.run(main())


def test_mysql_continuation_packets_are_never_commands():
    # a 16 MiB - 1 payload continues in the next packet, whose first byte is 0x02
    first = _mysql(0, b"\x03" + b"a" * (0xFFFFFF - 1))
    cont = _mysql(0, b"\x02 still the query")  # a sequence id that wrapped to 0
    nxt = _mysql(0, b"\x0e")  # COM_PING

    async def main() -> None:
        s = Session("mysql", _allow)
        sender = asyncio.ensure_future(s.send(first + cont + nxt))
        got = await s.server_reads(len(first) + len(cont) + len(nxt))
        await sender
        stats = await s.end()
        assert got == first + cont + nxt and s.held == []
        assert stats.bytes_a_to_b == len(got)

    asyncio.run(main())
