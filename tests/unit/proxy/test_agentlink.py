"""The proxy ↔ agent link messages: what is encoded is decoded; anything else is a
LinkError, never a crash or an unbounded read."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from mwiproxy.wire import agentlink
from mwiproxy.wire.frames import MAX_FRAME


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def readexactly(self, n: int) -> bytes:
        if len(self.data) < n:
            raise asyncio.IncompleteReadError(self.data, n)
        out, self.data = self.data[:n], self.data[n:]
        return out


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_session_hello_round_trip() -> None:
    hello = agentlink.Hello(agentlink.OP_SESSION, "db1", "alice", b"\x30\x82der",
                            db_name="example-db", startup=b"\x00\x00\x00\x08startup",
                            remote="127.0.0.1:5", session_id=7, grant="g" * 43)
    assert asyncio.run(agentlink.read_hello(_Reader(hello.encode()))) == hello
    assert "g" * 43 not in repr(hello)  # the grant is a secret: never in a log line


def test_cancel_hello_round_trip() -> None:
    hello = agentlink.Hello(agentlink.OP_CANCEL, "db1", "alice", b"der", cancel=(42, -9))
    got = asyncio.run(agentlink.read_hello(_Reader(hello.encode())))
    assert got.cancel == (42, -9) and got.startup == b""


@pytest.mark.parametrize("reply", [
    agentlink.Reply(agentlink.OK, cancel_key=(1, 2), answer=b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    agentlink.Reply(agentlink.REFUSED, "no", answer=b"E..."),
    agentlink.Reply(agentlink.DENIED, "not a proxy"),
])
def test_reply_round_trip_leaves_the_session_bytes(reply: agentlink.Reply) -> None:
    reader = _Reader(reply.encode() + b"session bytes")
    assert asyncio.run(agentlink.read_reply(reader)) == reply
    assert reader.data == b"session bytes"


@pytest.mark.parametrize(("raw", "fragment"), [
    (_frame({"op": "drop"}), "unknown op"),
    (_frame([1]), "JSON object"),
    (b"\x00\x00\x00\x03{x}", "malformed JSON"),
    (struct.pack(">I", MAX_FRAME + 1), "exceeds"),
    (_frame({"op": "session", "service": 1}), "must be a string"),
    (_frame({"op": "session", "service": "a", "db_user": "u", "client_cert": "!!",
             "startup": ""}), "client_cert"),
    (_frame({"op": "cancel", "service": "a", "db_user": "u", "client_cert": "",
             "cancel": [1]}), "two integers"),
    (_frame({"op": "session", "service": "a", "db_user": "u", "client_cert": "",
             "startup": "", "grant": "g" * (agentlink.MAX_GRANT + 1)}), "grant longer"),
    (_frame({"op": "session", "service": "a", "db_user": "u", "client_cert": "",
             "startup": "", "grant": 5}), "grant must be a string"),
])
def test_bad_hello(raw: bytes, fragment: str) -> None:
    with pytest.raises(agentlink.LinkError, match=fragment):
        asyncio.run(agentlink.read_hello(_Reader(raw)))


@pytest.mark.parametrize("msg", [
    {"status": "maybe", "answer": 0},
    {"status": "ok", "answer": agentlink.MAX_ANSWER + 1},
    {"status": "ok", "answer": -1},
    {"status": "ok", "answer": "3"},
])
def test_bad_reply(msg: dict[str, object]) -> None:
    with pytest.raises(agentlink.LinkError):
        asyncio.run(agentlink.read_reply(_Reader(_frame(msg))))


def test_truncated_reply_is_an_incomplete_read() -> None:
    raw = agentlink.Reply(agentlink.OK, answer=b"0123456789").encode()[:-3]
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(agentlink.read_reply(_Reader(raw)))
