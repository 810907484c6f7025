"""wire/mongomsg.py: what the MongoDB engine reads of each client message, checked
against pymongo's own BSON codec, and fuzzed: any bytes give a ClientMessage or a
ProtocolError, within the bounds."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg

bson = pytest.importorskip("bson")
SON = bson.SON

MAX = mongo.MAX_MESSAGE


def op_msg(doc, *, flags=0, seqs=(), request_id=7, checksum=False) -> bytes:
    body = struct.pack("<I", flags | (mongo.MSG_CHECKSUM_PRESENT if checksum else 0))
    body += b"\0" + bson.encode(doc)
    for ident, docs in seqs:
        payload = ident.encode() + b"\0" + b"".join(bson.encode(d) for d in docs)
        body += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    if checksum:
        body += b"\0\0\0\0"  # not checked here; stripped with the field it covers
    return struct.pack("<iiii", 16 + len(body), request_id, 0, mongo.OP_MSG) + body


def op_query(namespace: str, doc, request_id=9) -> bytes:
    body = (struct.pack("<i", 0) + namespace.encode() + b"\0" + struct.pack("<ii", 0, -1)
            + bson.encode(doc))
    return struct.pack("<iiii", 16 + len(body), request_id, 0, mongo.OP_QUERY) + body


def query_doc(message: bytes) -> dict:
    at = message.index(b"\0", 20) + 9
    return bson.decode(message[at:])


RICH = SON([("insert", "things"), ("ordered", True),
            ("lsid", {"id": bson.Binary(b"\x01" * 16, 4)}),
            ("$clusterTime", {"clusterTime": bson.Timestamp(1, 2)}),
            ("when", bson.datetime.datetime(2026, 1, 1)), ("oid", bson.ObjectId()),
            ("re", bson.Regex("^a", "i")), ("big", bson.Int64(1 << 40)),
            ("dec", bson.Decimal128("1.5")), ("none", None), ("code", bson.Code("f()")),
            ("min", bson.MinKey()), ("max", bson.MaxKey()), ("$db", "example-db")])


def test_op_msg_names_its_database_and_command_whatever_its_field_types():
    msg = mongomsg.inspect(op_msg(RICH, seqs=[("documents", [{"a": 1}, {"b": [1, 2]}])]),
                           MAX)
    assert (msg.database, msg.command, msg.expects_reply) == ("example-db", "insert", True)
    assert not (msg.is_auth or msg.is_handshake or msg.compressed)


def test_more_to_come_expects_no_reply():
    msg = mongomsg.inspect(op_msg({"insert": "t", "$db": "d"},
                                  flags=mongo.MSG_MORE_TO_COME), MAX)
    assert msg.expects_reply is False


@pytest.mark.parametrize("name", ["saslStart", "saslContinue", "authenticate", "logout",
                                  "SASLSTART"])
def test_authentication_commands_are_recognised(name):
    assert mongomsg.inspect(op_msg({name: 1, "$db": "admin"}), MAX).is_auth


def test_op_query_database_is_the_namespace_prefix_and_a_wrapped_command_is_seen():
    plain = mongomsg.inspect(op_query("admin.$cmd", SON([("isMaster", 1)])), MAX)
    assert (plain.database, plain.command, plain.is_handshake) == ("admin", "isMaster", True)
    wrapped = mongomsg.inspect(op_query("shop.$cmd", SON([
        ("$query", SON([("saslStart", 1)])), ("$readPreference", {"mode": "primary"})])), MAX)
    assert (wrapped.database, wrapped.command, wrapped.is_auth) == ("shop", "saslStart", True)
    assert mongomsg.inspect(op_query("nodot", {"find": 1}), MAX).database == ""


def test_a_message_without_db_names_no_database():
    assert mongomsg.inspect(op_msg({"ping": 1}), MAX).database == ""


def test_op_compressed_is_seen_as_such_with_its_reply_format():
    inner = op_msg({"ping": 1, "$db": "d"})[16:]
    body = struct.pack("<iiB", mongo.OP_MSG, len(inner), 0) + inner
    message = struct.pack("<iiii", 16 + len(body), 3, 0, mongo.OP_COMPRESSED) + body
    msg = mongomsg.inspect(message, MAX)
    assert msg.compressed and msg.op_code == mongo.OP_MSG and msg.database == ""


@pytest.mark.parametrize("length", [15, 0, -1, MAX + 1])
def test_lengths_out_of_bounds_are_refused(length):
    with pytest.raises(mongo.ProtocolError):
        mongomsg.inspect(struct.pack("<iiii", length, 1, 0, mongo.OP_MSG), MAX)


def test_the_server_max_message_size_bounds_messages():
    message = op_msg({"insert": "t", "x": "y" * 2000, "$db": "d"})
    with pytest.raises(mongo.ProtocolError):
        mongomsg.inspect(message, 1024)


def test_too_many_fields_or_sections_are_refused():
    wide = SON((f"f{i}", i) for i in range(mongomsg.MAX_FIELDS + 1))
    with pytest.raises(mongo.ProtocolError, match="fields"):
        mongomsg.inspect(op_msg(wide), MAX)
    many = [("s", [{"a": 1}])] * (mongomsg.MAX_SECTIONS + 1)
    with pytest.raises(mongo.ProtocolError, match="sections"):
        mongomsg.inspect(op_msg({"insert": "t", "$db": "d"}, seqs=many), MAX)


def test_legacy_op_codes_are_refused():
    with pytest.raises(mongo.ProtocolError, match="2002"):
        mongomsg.inspect(struct.pack("<iiii", 20, 1, 0, 2002) + b"\0" * 4, MAX)


HELLO = SON([("hello", 1), ("helloOk", True), ("compression", ["zstd", "zlib"]),
             ("client", {"driver": {"name": "x", "version": "1"}}),
             ("speculativeAuthenticate", {"saslStart": 1}),
             ("saslSupportedMechs", "admin.alice"), ("$db", "admin")])


@pytest.mark.parametrize("checksum", [False, True])
def test_the_handshake_loses_compression_and_authentication_only(checksum):
    original = op_msg(HELLO, checksum=checksum)
    stripped = mongomsg.strip_handshake(original, mongomsg.inspect(original, MAX))
    assert struct.unpack_from("<i", stripped)[0] == len(stripped)
    flags = struct.unpack_from("<I", stripped, 16)[0]
    assert flags == 0
    assert bson.decode(stripped[21:]) == {"hello": 1, "helloOk": True,
                                          "client": HELLO["client"], "$db": "admin"}


def test_a_legacy_handshake_is_stripped_inside_its_query_wrapper():
    doc = SON([("$query", SON([("isMaster", 1), ("compression", ["zlib"]),
                               ("client", {"a": "b"})])), ("$readPreference", {"m": 1})])
    original = op_query("admin.$cmd", doc)
    stripped = mongomsg.strip_handshake(original, mongomsg.inspect(original, MAX))
    assert struct.unpack_from("<i", stripped)[0] == len(stripped)
    assert query_doc(stripped) == {"$query": {"isMaster": 1, "client": {"a": "b"}},
                                   "$readPreference": {"m": 1}}


def test_other_messages_pass_unchanged():
    for message in (op_msg(RICH), op_msg({"hello": 1, "$db": "admin"})):
        assert mongomsg.strip_handshake(message, mongomsg.inspect(message, MAX)) is message


def test_reply_scalars_skip_what_they_do_not_read():
    reply = SON([("ismaster", True), ("topologyVersion", {"processId": bson.ObjectId()}),
                 ("localTime", bson.datetime.datetime(2026, 1, 1)),
                 ("maxMessageSizeBytes", 48_000_000), ("big", bson.Int64(5)),
                 ("ok", 1.0), ("errmsg", "none")])
    body = struct.pack("<I", 0) + b"\0" + bson.encode(reply)
    message = struct.pack("<iiii", 16 + len(body), 1, 5, mongo.OP_MSG) + body
    header, got = mongomsg.reply_scalars(message, 1 << 20)
    assert header.response_to == 5
    assert got == {"ismaster": True, "maxMessageSizeBytes": 48_000_000, "big": 5,
                   "ok": 1.0, "errmsg": "none"}


# -- fuzz ------------------------------------------------------------------------------

def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    def mutate(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(seed)
        for pos, value in edits:
            out[pos % len(out)] = value
        return bytes(out)
    return st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                    min_size=1, max_size=6).map(mutate)


SEEDS = [op_msg(RICH, seqs=[("documents", [{"a": 1}])]), op_msg(HELLO, checksum=True),
         op_query("admin.$cmd", SON([("$query", SON([("isMaster", 1),
                                                      ("compression", ["z"])]))]))]


def _inspect_and_strip(data: bytes) -> None:
    try:
        msg = mongomsg.inspect(data, 1 << 20)
        out = mongomsg.strip_handshake(data, msg)
    except mongo.ProtocolError:
        return
    assert struct.unpack_from("<i", out)[0] == len(out) <= len(data)
    assert 16 <= msg.header.length == len(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))).flatmap(lambda i: _mutations(SEEDS[i])))
def test_fuzz_mutated_messages_give_a_message_or_a_protocol_error(data):
    _inspect_and_strip(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_after_a_valid_header(tail):
    for op_code in (mongo.OP_MSG, mongo.OP_QUERY, mongo.OP_COMPRESSED):
        _inspect_and_strip(struct.pack("<iiii", 16 + len(tail), 1, 0, op_code) + tail)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=64))
def test_fuzz_reply_scalars(data):
    try:
        mongomsg.reply_scalars(data, 1 << 20)
    except mongo.ProtocolError:
        pass


def test_two_db_fields_are_refused():
    one = bson.encode(SON([("find", "t"), ("$db", "a")]))
    extra = b"\x02$db\0" + struct.pack("<i", 2) + b"b\0"  # a dict cannot hold it twice
    doc = struct.pack("<i", len(one) + len(extra)) + one[4:-1] + extra + b"\0"
    body = struct.pack("<I", 0) + b"\0" + doc
    with pytest.raises(mongo.ProtocolError, match=r"\$db"):
        mongomsg.inspect(struct.pack("<iiii", 16 + len(body), 1, 0, mongo.OP_MSG) + body, MAX)


def test_writes_to_other_databases_are_seen():
    pipeline = [{"$match": {}}, {"$out": {"db": "out-db", "coll": "c"}},
                {"$merge": {"into": {"db": "merge-db", "coll": "c"}}}, {"$out": "same-db"},
                {"$merge": {"into": "plain"}}]
    msg = mongomsg.inspect(op_msg(SON([("aggregate", "t"), ("pipeline", pipeline),
                                       ("cursor", {}), ("$db", "example-db")])), MAX)
    assert msg.writes_to == ("out-db", "merge-db")
    mr = mongomsg.inspect(op_msg(SON([("mapReduce", "t"), ("map", bson.Code("f")),
                                      ("out", {"replace": "c", "db": "mr-db"}),
                                      ("$db", "example-db")])), MAX)
    assert mr.writes_to == ("mr-db",)
    assert mongomsg.inspect(op_msg({"find": "t", "$db": "d"}), MAX).writes_to == ()
