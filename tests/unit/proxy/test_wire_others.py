"""The MySQL, Redis and MongoDB wire pieces the refusals are built from: what is
encoded decodes back (and, for BSON, agrees with pymongo's `bson`), and truncated or
oversized input is rejected instead of buffered without end."""

from __future__ import annotations

import asyncio
import struct

import pytest

from mwiproxy.proxy import mongojudge as mongofront
from mwiproxy.proxy import redis as redis_frontend
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mysql
from mwiproxy.wire import redis as resp

bson = pytest.importorskip("bson")

# -- MySQL -------------------------------------------------------------------------------


def test_mysql_err_packet_round_trip():
    raw = mysql.err_packet(1045, "28000", "access to db denied: nope")
    assert raw[:4] == bytes([len(raw) - 4, 0, 0, 0])  # 3-byte length, sequence 0
    split = mysql.split_packet(raw)
    assert split is not None
    packet, rest = split
    assert rest == b"" and packet.sequence == 0
    assert mysql.parse_err(packet.payload) == mysql.ErrPacket(1045, "28000",
                                                              "access to db denied: nope")


def test_mysql_err_packet_sequence_and_pre_41_form():
    packet, _ = mysql.split_packet(mysql.err_packet(1105, "HY000", "x", sequence=2)) or ()
    assert packet.sequence == 2
    assert mysql.parse_err(b"\xff\x51\x04no marker") == mysql.ErrPacket(1105, "", "no marker")


def test_mysql_message_is_cut_to_what_clients_keep_without_splitting_a_character():
    packet, _ = mysql.split_packet(mysql.err_packet(1045, "28000", "é" * 400)) or ()
    message = mysql.parse_err(packet.payload).message
    assert message == "é" * 256 and len(message.encode()) <= mysql.MAX_MESSAGE


def test_mysql_rejects_bad_input():
    raw = mysql.err_packet(1045, "28000", "hello")
    assert mysql.split_packet(raw[:3]) is None  # header incomplete
    assert mysql.split_packet(raw[:-1]) is None  # payload incomplete
    with pytest.raises(mysql.ProtocolError):
        mysql.split_packet(b"\xff\xff\xff\x00", max_payload=1024)
    with pytest.raises(mysql.ProtocolError):
        mysql.parse_err(b"\x00\x00\x00")
    with pytest.raises(mysql.ProtocolError):
        mysql.parse_err(b"\xff\x15\x04#280")
    with pytest.raises(ValueError):
        mysql.err_packet(1045, "2800", "short SQLSTATE")
    with pytest.raises(ValueError):
        mysql.packet(b"", sequence=256)


# -- Redis -------------------------------------------------------------------------------


def test_redis_command_round_trip_and_pipelining():
    one = resp.encode_command("CLIENT", "SETINFO", "LIB-NAME", b"redis-py\r\n")
    two = resp.encode_command("PING")
    command = resp.parse_command(one + two)
    assert command is not None
    assert command.args == (b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py\r\n")
    assert command.name == "CLIENT" and command.size == len(one)
    second = resp.parse_command((one + two)[command.size:])
    assert second is not None and second.args == (b"PING",)


def test_redis_incomplete_commands_wait_for_more():
    raw = resp.encode_command("ECHO", "hello")
    for cut in range(len(raw)):
        assert resp.parse_command(raw[:cut]) is None, cut
    assert resp.parse_command(b"PING\r") is None


def test_redis_inline_and_empty_commands():
    command = resp.parse_command(b"ping  now\r\nrest")
    assert command is not None and command.args == (b"ping", b"now") and command.name == "PING"
    assert command.size == len(b"ping  now\r\n")
    empty = resp.parse_command(b"\r\n")
    assert empty is not None and empty.args == ()
    zero = resp.parse_command(b"*0\r\n")
    assert zero is not None and zero.args == () and zero.size == 4


@pytest.mark.parametrize("raw", [
    b"*2000\r\n",                                  # too many arguments
    b"*1\r\n$100000\r\n",                          # a bulk string over the cap
    b"*1\r\n" + b"$" + b"9" * 200,                 # a length line that never ends
    b"GET " + b"k" * (resp.MAX_COMMAND + 1),       # an inline line over the cap
    b"*x\r\n",                                     # not a number
    b"*--1\r\n",
    b"*-1\r\n",                                    # a null array is no command
    b"*1\r\n:1\r\n",                               # not a bulk string
    b"*1\r\n$2\r\nabcd\r\n",                       # bulk string longer than it says
    b"*1\r\n$-1\r\n",
])
def test_redis_rejects_malformed_and_oversized_commands(raw):
    with pytest.raises(resp.ProtocolError):
        resp.parse_command(raw)


def test_redis_error_reply_is_one_line():
    reply = resp.error_reply("ERR access to db denied:\r\ntwo lines")
    assert reply == b"-ERR access to db denied:  two lines\r\n"
    assert resp.parse_error_reply(reply) == "ERR access to db denied:  two lines"
    with pytest.raises(resp.ProtocolError):
        resp.parse_error_reply(b"+OK\r\n")
    with pytest.raises(resp.ProtocolError):
        resp.parse_error_reply(b"-ERR a\r\n-ERR b\r\n")


# -- MongoDB: BSON -----------------------------------------------------------------------

DOC = {"ok": 0.0, "errmsg": "access to db denied: é", "code": 13, "codeName": "Unauthorized",
       "big": 1 << 40, "flag": True, "nothing": None, "sub": {"a": [1, "two", False]}}


def test_bson_round_trip_and_agreement_with_pymongo():
    raw = mongo.encode_document(DOC)
    assert mongo.decode_document(raw) == DOC
    assert bson.decode(raw) == DOC
    assert mongo.encode_document(DOC) == bson.encode(DOC)
    assert mongo.decode_document(bson.encode(DOC)) == DOC
    assert mongo.first_key(raw) == "ok" and mongo.first_key(bson.encode({})) == ""


@pytest.mark.parametrize("cut", [1, 4, 5, 10, -2, -1])
def test_bson_rejects_truncated_documents(cut):
    raw = mongo.encode_document(DOC)
    with pytest.raises(mongo.ProtocolError):
        mongo.decode_document(raw[:cut])


def test_bson_rejects_lies_and_unknown_types():
    raw = bytearray(mongo.encode_document({"s": "abc"}))
    raw[7:11] = struct.pack("<i", 1000)  # the string claims more than the document holds
    with pytest.raises(mongo.ProtocolError):
        mongo.decode_document(bytes(raw))
    with pytest.raises(mongo.ProtocolError):
        mongo.decode_document(bson.encode({"t": bson.Timestamp(1, 2)}))
    with pytest.raises(mongo.ProtocolError):
        mongo.decode_document(mongo.encode_document({"a": 1}) + b"x")
    with pytest.raises(ValueError):
        mongo.encode_document({"a\0b": 1})
    deep: dict[str, object] = {}
    for _ in range(mongo.MAX_DEPTH + 2):
        deep = {"d": deep}
    with pytest.raises(ValueError):
        mongo.encode_document(deep)
    with pytest.raises(mongo.ProtocolError):
        mongo.decode_document(bson.encode(deep))


# -- MongoDB: messages -------------------------------------------------------------------

def _message(op_code: int, body: bytes, request_id: int = 7) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, 0, op_code) + body


def _op_query(command: dict[str, object]) -> bytes:
    body = struct.pack("<i", 0) + b"admin.$cmd\0" + struct.pack("<ii", 0, -1)
    return _message(mongo.OP_QUERY, body + bson.encode(command))


def _op_msg(command: dict[str, object], flags: int = 0, sequence: bool = False) -> bytes:
    body = struct.pack("<I", flags)
    if sequence:  # a kind-1 section (documents) before the body
        docs = bson.encode({"_id": 1})
        body += b"\x01" + struct.pack("<i", 4 + len(b"documents\0") + len(docs)) \
            + b"documents\0" + docs
    body += b"\x00" + bson.encode(command)
    if flags & mongo.MSG_CHECKSUM_PRESENT:
        body += b"\0\0\0\0"
    return _message(mongo.OP_MSG, body)


HELLO = {"isMaster": 1, "helloOk": True, "client": {"driver": {"name": "x"}},
         "compression": []}


def test_a_handshake_is_answered_in_kind():
    query = mongo.parse_request(_op_query(HELLO))
    assert (query.command, query.header.request_id, query.expects_reply) == ("isMaster", 7, True)
    reply = mongo.reply_to(query, mongo.error_document("no"), request_id=3)
    header, doc = mongo.parse_reply(reply)
    assert (header.op_code, header.response_to, header.request_id) == (mongo.OP_REPLY, 7, 3)
    assert doc == {"ok": 0.0, "errmsg": "no", "code": 13, "codeName": "Unauthorized"}
    assert struct.unpack_from("<iqii", reply, 16) == (0, 0, 0, 1)

    msg = mongo.parse_request(_op_msg({"hello": 1, "$db": "admin"}))
    header, doc = mongo.parse_reply(mongo.reply_to(msg, mongo.error_document(
        "x", mongo.HOST_UNREACHABLE)))
    assert (msg.command, header.op_code, header.response_to) == ("hello", mongo.OP_MSG, 7)
    assert doc["code"] == 6 and doc["codeName"] == "HostUnreachable"


def test_op_msg_sections_checksum_and_more_to_come():
    got = mongo.parse_request(_op_msg({"insert": "c"}, sequence=True))
    assert got.command == "insert"
    flags = mongo.MSG_CHECKSUM_PRESENT | mongo.MSG_MORE_TO_COME
    got = mongo.parse_request(_op_msg({"ping": 1}, flags=flags))
    assert got.command == "ping" and not got.expects_reply


@pytest.mark.parametrize("raw", [
    b"\x10\x00\x00",                                           # short header
    struct.pack("<iiii", 15, 0, 0, mongo.OP_MSG),              # length below 16
    struct.pack("<iiii", mongo.MAX_MESSAGE + 1, 0, 0, mongo.OP_MSG),
    _op_query(HELLO)[:-1],                                     # shorter than it says
    _message(mongo.OP_COMPRESSED, b"\0" * 9),                  # not expected from a client
    _message(mongo.OP_MSG, struct.pack("<I", 0)),              # no sections
    _message(mongo.OP_MSG, struct.pack("<I", 0) + b"\x02" + bson.encode({})),
    _message(mongo.OP_QUERY, struct.pack("<i", 0) + b"admin.$cmd"),  # no NUL
    _message(mongo.OP_QUERY, struct.pack("<i", 0) + b"a\0" + b"\0" * 8 + b"\xff\0\0\0\0"),
])
def test_mongodb_rejects_truncated_oversized_and_unexpected_messages(raw):
    with pytest.raises(mongo.ProtocolError):
        mongo.parse_request(raw)


# -- the refusals built on them (no access check: the verdict is given) --------------------

class FakeStream:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.written: list[bytes] = []

    async def read(self, max_bytes: int = 65536) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


def test_redis_refusal_answers_every_command_up_to_a_bound():
    commands = resp.encode_command("CLIENT", "SETINFO", "LIB-NAME", "x") + b"\r\n"
    stream = FakeStream(commands[:5], commands[5:], resp.encode_command("PING") * 40)
    asyncio.run(redis_frontend.answer_errors(stream, "access to db denied: why"))
    assert stream.written == [b"-ERR access to db denied: why\r\n"] * redis_frontend.MAX_ANSWERS


def test_redis_refusal_stops_at_an_oversized_command():
    stream = FakeStream(b"*1\r\n$999999\r\n")
    with pytest.raises(resp.ProtocolError):
        asyncio.run(redis_frontend.answer_errors(stream, "access to db denied: why"))
    assert stream.written == []


def test_mongodb_refusal_answers_each_message_and_caps_what_it_reads():
    """A refusal held until the client's messages (proxy/mongojudge.py answer_with)."""
    document = mongo.error_document("access to db denied: why")
    stream = FakeStream(_op_query(HELLO), _op_msg({"ping": 1}))
    asyncio.run(mongofront.answer_with(stream, document))
    replies = [mongo.parse_reply(w) for w in stream.written]
    assert [h.op_code for h, _ in replies] == [mongo.OP_REPLY, mongo.OP_MSG]
    assert all(d["errmsg"] == "access to db denied: why" for _, d in replies)
    big = struct.pack("<iiii", mongofront.READ_CAP + 1, 1, 0, mongo.OP_MSG)
    stream = FakeStream(big)
    with pytest.raises(mongo.ProtocolError):
        asyncio.run(mongofront.answer_with(stream, document))
    assert stream.written == []
