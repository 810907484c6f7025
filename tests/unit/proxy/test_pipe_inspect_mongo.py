"""Pipe(inspect=Inspect("mongodb", allowed=...)): OP_MSGs on an allowed `$db` with no
authentication command stream through the relay with no word to Python; every other
message is held for decide (other databases, auth commands, OP_QUERY), a message over
64 KiB whose `$db` lies past its first 64 KiB is judged whole, and a message over
max_message ends the pipe as "protocol". Both builds."""

from __future__ import annotations

import asyncio
import hashlib
import struct

import bson
import pytest
from bson import SON

from mwiproxy import _native
from mwiproxy.relay.pipe import Answer, Replace
from mwiproxy.wire import mongodb as mongo

from .test_pipe_inspect import BROKEN, Session, _allow, _read

ALLOWED = ("app", "tést")
REFUSAL = b"refused-reply"


def op_msg(doc: SON, sequence: tuple[str, list[dict]] | None = None, flags: int = 0,
           request_id: int = 1) -> bytes:
    sections = b"\x00" + bson.encode(doc)
    if sequence is not None:
        ident, docs = sequence
        payload = ident.encode() + b"\0" + b"".join(bson.encode(d) for d in docs)
        sections += b"\x01" + struct.pack("<i", len(payload) + 4) + payload
    body = struct.pack("<I", flags) + sections
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body


def op_query(db: str) -> bytes:
    body = struct.pack("<i", 0) + f"{db}.$cmd".encode() + b"\0" + struct.pack("<ii", 0, -1) \
        + bson.encode({"hello": 1})
    return struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body


FIND = op_msg(SON([("find", "c"), ("filter", {"x": {"$gt": 1}}), ("$db", "app")]))
PING = op_msg(SON([("ping", 1), ("lsid", {"id": bson.Binary(b"u" * 16, 4)}),
                   ("$db", "tést")]), request_id=2)
INSERT = op_msg(SON([("insert", "c"), ("ordered", True), ("$db", "app")]),
                ("documents", [{"_id": i, "v": "x" * 100} for i in range(5)]), request_id=3)
OTHER_DB = op_msg(SON([("find", "c"), ("$db", "admin")]), request_id=4)
SASL = op_msg(SON([("saslStart", 1), ("mechanism", "SCRAM-SHA-256"), ("$db", "app")]),
              request_id=5)
CHECKSUM = op_msg(SON([("ping", 1), ("$db", "app")]), flags=1, request_id=6)


async def _never(message: bytes) -> bytes:
    raise AssertionError(f"decide called for a message that passes: {message[:60]!r}")


@pytest.mark.parametrize("step", [0, 1, 7], ids=["whole", "every-byte", "by-7"])
def test_allowed_db_streams_without_decide(step):
    stream = FIND + PING + INSERT + FIND

    async def main() -> None:
        s = Session("mongodb", _never, allowed=ALLOWED)
        await s.send(stream, step)
        stats = await s.end()
        assert s.rest == stream
        assert s.held == []  # decide never called
        assert stats.reason == _native.REASON_EOF
        assert stats.bytes_a_to_b == len(stream)

    asyncio.run(main())


@pytest.mark.parametrize("message", [OTHER_DB, SASL, op_query("app"), CHECKSUM],
                         ids=["other-db", "saslStart", "op-query", "checksum"])
def test_other_messages_are_held_in_order_and_allowed_go_on(message):
    stream = FIND + message + PING

    async def main() -> None:
        s = Session("mongodb", _allow, allowed=ALLOWED)
        await s.send(stream, 5)
        stats = await s.end()
        assert s.held == [message]  # the exact bytes
        assert s.rest == stream
        assert stats.bytes_a_to_b == len(stream)

    asyncio.run(main())


def test_refused_message_never_reaches_the_server():
    async def main() -> None:
        async def refuse(message: bytes) -> bytes:
            return REFUSAL

        s = Session("mongodb", refuse, allowed=ALLOWED)
        await s.send(FIND + OTHER_DB + PING)
        assert await s.server_reads(len(FIND)) == FIND
        got = await _read(s.loop, s.client, None)
        assert got == REFUSAL
        stats = await asyncio.wait_for(s.task, 10)
        assert await _read(s.loop, s.server, None) == b""  # neither it nor what followed
        assert s.held == [OTHER_DB]
        assert stats.reason == _native.REASON_REFUSED
        assert stats.bytes_a_to_b == len(FIND)
        s.client.close()
        s.server.close()

    asyncio.run(main())


def test_16_mib_op_msg_on_an_allowed_db_streams():
    docs = [{"_id": i, "blob": bson.Binary(bytes([i]) * (1 << 20))} for i in range(16)]
    big = op_msg(SON([("insert", "c"), ("$db", "app")]), ("documents", docs))
    assert len(big) > 16 << 20
    want = hashlib.sha256(FIND + big + PING).hexdigest()

    async def main() -> None:
        s = Session("mongodb", _never, allowed=ALLOWED)
        sender = asyncio.ensure_future(s.send(FIND + big + PING))
        got = await s.server_reads(len(FIND + big + PING))
        await sender
        stats = await s.end()
        assert hashlib.sha256(got + s.rest).hexdigest() == want
        assert s.held == []
        assert stats.bytes_a_to_b == len(FIND + big + PING)

    asyncio.run(main())


@pytest.mark.parametrize("message", [
    struct.pack("<iiii", 15, 1, 0, 2013) + b"\0" * 20,  # shorter than its header
    struct.pack("<iiii", 48_000_001, 1, 0, 2013),  # over max_message
], ids=["short", "over-max"])
def test_violations_end_the_pipe_with_the_farewell(message):
    async def main() -> None:
        s = Session("mongodb", _never, allowed=ALLOWED)
        await s.send(FIND + message)
        got = await _read(s.loop, s.client, None)
        stats = await asyncio.wait_for(s.task, 10)
        assert got == BROKEN
        assert stats.reason == _native.REASON_PROTOCOL
        assert await _read(s.loop, s.server, None) == FIND  # none of the bad message
        assert s.held == []
        s.client.close()
        s.server.close()

    asyncio.run(main())


@pytest.mark.parametrize("message,op_reply", [(OTHER_DB, False), (op_query("admin"), True)],
                         ids=["op-msg", "op-query"])
def test_decide_answers_in_the_format_the_held_message_expects(message, op_reply):
    """What a MongoDB front end's decide does with a held message: the refusal reply
    built from its exact bytes (wire/mongodb.py), read by the client as its answer."""
    async def main() -> None:
        async def refuse(held: bytes) -> bytes:
            request = mongo.parse_request(held)
            return mongo.reply_to(request, mongo.error_document("denied here"))

        s = Session("mongodb", refuse, allowed=ALLOWED)
        await s.send(message)
        got = await _read(s.loop, s.client, None)
        header, document = mongo.parse_reply(got)
        request_id = struct.unpack_from("<i", message, 4)[0]
        assert header.response_to == request_id
        assert (header.op_code == mongo.OP_REPLY) == op_reply
        assert document["ok"] == 0 and document["errmsg"] == "denied here"
        assert (await asyncio.wait_for(s.task, 10)).reason == _native.REASON_REFUSED
        s.client.close()
        s.server.close()

    asyncio.run(main())


LATE_DB = op_msg(SON([("insert", "c"), ("documents", [{"v": "x" * 300_000}]),
                      ("$db", "app")]), request_id=8)  # pymongo's order: `$db` last
LATE_OTHER = op_msg(SON([("insert", "c"), ("documents", [{"v": "x" * 70_000}]),
                         ("$db", "admin")]), request_id=9)
BIG_OTHER = op_msg(SON([("insert", "c"), ("$db", "admin")]),
                   ("documents", [{"v": "x" * 70_000}]), request_id=10)


@pytest.mark.parametrize("step", [0, 4093], ids=["whole", "by-4093"])
def test_db_past_64k_is_judged_on_the_whole_message(step):
    stream = FIND + LATE_DB + LATE_OTHER + BIG_OTHER + PING

    async def main() -> None:
        s = Session("mongodb", _allow, allowed=ALLOWED)
        sender = asyncio.ensure_future(s.send(stream, step))
        got = await s.server_reads(len(stream))
        await sender
        stats = await s.end()
        assert s.held == [LATE_OTHER, BIG_OTHER]  # whole; LATE_DB passed natively
        assert got + s.rest == stream
        assert stats.bytes_a_to_b == len(stream)

    asyncio.run(main())


def test_an_answered_message_is_dropped_and_the_session_goes_on():
    """Answer(reply): the client reads the reply, the server never sees the message,
    and the messages after it go on (decide is asked again for the next held one)."""
    async def main() -> None:
        async def answer(held: bytes) -> Answer:
            request = mongo.parse_request(held)
            return Answer(mongo.reply_to(request, mongo.error_document("denied here")))

        s = Session("mongodb", answer, allowed=ALLOWED)
        await s.send(FIND + OTHER_DB)
        assert await s.server_reads(len(FIND)) == FIND
        _, document = mongo.parse_reply(await _one_reply(s))
        assert document["errmsg"] == "denied here"
        await s.send(LATE_OTHER + PING)
        _, document = mongo.parse_reply(await _one_reply(s))
        assert document["errmsg"] == "denied here"
        stats = await s.end()
        assert s.rest == PING
        assert s.held == [OTHER_DB, LATE_OTHER]
        assert stats.bytes_a_to_b == len(FIND + PING)
        assert stats.bytes_b_to_a == 0  # the answers are not the server's bytes

    asyncio.run(main())


def test_a_replaced_message_reaches_the_server_in_its_place():
    async def main() -> None:
        async def replace(held: bytes) -> Replace:
            return Replace(PING)

        s = Session("mongodb", replace, allowed=ALLOWED)
        await s.send(OTHER_DB + FIND)
        stats = await s.end()
        assert s.rest == PING + FIND
        assert stats.bytes_a_to_b == len(PING + FIND)

    asyncio.run(main())


async def _one_reply(s: Session) -> bytes:
    got = await _read(s.loop, s.client, 4)  # a reply comes alone: nothing follows it yet
    n = struct.unpack_from("<i", got)[0]
    return got + (await _read(s.loop, s.client, n - len(got)) if len(got) < n else b"")
