"""Mutation fuzzing of every parser that reads what a client (or a database) sends, in
the engines' wire codecs: MySQL's handshake packets and held commands, Redis's held
commands and inline splitting, MongoDB's client messages and the handshake rewrite.

Each parser gets inputs made from valid seeds by random edits (byte sets, bit flips,
truncations, insertions, repeats, splices) and must either return a result within the
input's bounds or raise its module's ProtocolError — never another exception. Seeded
(reproducible: the failing input's index and seed are printed).

CI runs a short run (MWIPROXY_WIRE_FUZZ inputs per parser, 3,000 by default). The long
run: `MWIPROXY_WIRE_FUZZ=1000000 python3 -m pytest -q -p no:cacheprovider
tests/unit/test_wire_fuzz_long.py` (results in bench/RESULTS.md).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable

import pytest

from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg, mysql
from mwiproxy.wire import mysql_handshake as hs
from mwiproxy.wire import redis as resp

pytestmark = pytest.mark.long
RUNS = int(os.environ.get("MWIPROXY_WIRE_FUZZ", "3000"))
SEED = int(os.environ.get("MWIPROXY_WIRE_FUZZ_SEED", "20261202"))


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    out = bytearray(rng.choice(seeds))
    for _ in range(min(6, 1 + int(rng.expovariate(1.0)))):  # mostly one or two edits
        op, n = rng.randrange(7), len(out)
        if op == 0 and n:
            out[rng.randrange(n)] = rng.randrange(256)
        elif op == 1 and n:
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 2 and n:
            del out[rng.randrange(n):]
        elif op == 3:
            at = rng.randrange(n + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and n:
            a = rng.randrange(n)
            out[a:a] = out[a:a + rng.randint(1, 64)] * rng.randint(1, 4)
        elif op == 5:
            other = rng.choice(seeds)
            out += other[rng.randrange(len(other) + 1):]
        elif op == 6 and n >= 4:  # a length field made huge, zero or negative
            at = rng.randrange(n - 3)
            out[at:at + 4] = struct.pack("<i", rng.choice((0, -1, 1 << 30, 0x7FFFFFFF,
                                                           rng.randrange(1 << 24))))
    return bytes(out)


def _fuzz(parse: Callable[[bytes], object], seeds: list[bytes],
          errors: tuple[type[BaseException], ...]) -> int:
    rng = random.Random(SEED)
    parsed = 0
    for i in range(RUNS):
        data = _mutate(rng, seeds)
        try:
            parse(data)
            parsed += 1
        except errors:
            pass
        except Exception as e:  # a bug: say how to replay it
            raise AssertionError(f"input {i} (seed {SEED}) raised {type(e).__name__}: "
                                 f"{e}\n{data!r}") from e
    return parsed


# -- MySQL ------------------------------------------------------------------------------

def _greeting() -> bytes:
    return hs.build_greeting(hs.Greeting("10.11.6-MariaDB", 7, 0xF7FF | hs.PROTOCOL_41,
                                         45, 2, b"s" * 20, hs.NATIVE_PASSWORD))


def _response(db: str = "example-db") -> bytes:
    caps = hs.PROTOCOL_41 | hs.PLUGIN_AUTH | hs.CONNECT_WITH_DB
    return hs.build_handshake_response(hs.HandshakeResponse(
        caps, hs.MAX_PACKET, 45, "alice", b"x" * 20, db, hs.NATIVE_PASSWORD))


MYSQL_SEEDS = [_greeting(), _response(), _response(""),
               hs.build_ssl_request(hs.PROTOCOL_41 | hs.SSL),
               b"\xfe" + hs.NATIVE_PASSWORD.encode() + b"\0" + b"a" * 20 + b"\0",
               hs.init_db("example-db"), mysql.packet(b"\x11alice\0\0example-db\0", 0),
               mysql.packet(b"\x03select 1", 0)]


def _mysql_all(data: bytes) -> None:
    for parse in (hs.parse_greeting, hs.parse_handshake_response, hs.parse_auth_switch):
        try:
            parse(data)
        except mysql.ProtocolError:
            pass
    command, argument = hs.parse_command(data)
    assert 0 <= command < 256 and len(argument) < len(data)


def test_mysql_parsers_give_a_result_or_a_protocol_error() -> None:
    assert _fuzz(_mysql_all, MYSQL_SEEDS, (mysql.ProtocolError,)) > 0


# -- Redis ------------------------------------------------------------------------------

REDIS_SEEDS = [resp.encode_command("AUTH", "bob", "secret"), resp.encode_command("AUTH", "x"),
               resp.encode_command("HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "n"),
               resp.encode_command("RESET"), b'AUTH bob "s\\x65cret"\r\n',
               b"auth 'bob' pw\n", b'HELLO 3 AUTH "a b" c\r\n']


def _redis_all(data: bytes) -> None:
    args = resp.parse_held(data)
    if args is not None:
        assert sum(len(a) for a in args) <= len(data)
    line = data.split(b"\n", 1)[0]
    split = resp.split_inline(line)
    if split is not None:
        assert sum(len(a) for a in split) <= len(line)


def test_redis_parsers_give_a_result_or_a_protocol_error() -> None:
    assert _fuzz(_redis_all, REDIS_SEEDS, (resp.ProtocolError,)) > 0


# -- MongoDB ----------------------------------------------------------------------------

def _op_msg(doc: dict[str, object], *, flags: int = 0) -> bytes:
    body = struct.pack("<I", flags) + b"\0" + mongo.encode_document(doc)
    return struct.pack("<iiii", 16 + len(body), 1, 0, mongo.OP_MSG) + body


def _op_query(collection: str, doc: dict[str, object]) -> bytes:
    body = (struct.pack("<i", 0) + collection.encode() + b"\0" + struct.pack("<ii", 0, -1)
            + mongo.encode_document(doc))
    return struct.pack("<iiii", 16 + len(body), 2, 0, mongo.OP_QUERY) + body


MONGO_SEEDS = [
    _op_msg({"find": "things", "filter": {"a": 1, "b": [1, 2, {"c": "d"}]},
             "$db": "example-db"}),
    _op_msg({"hello": 1, "helloOk": True, "compression": ["zstd"], "$db": "admin"}),
    _op_msg({"aggregate": "t", "pipeline": [{"$out": {"db": "other", "coll": "x"}}],
             "$db": "example-db"}),
    _op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "$db": "admin"}),
    _op_query("admin.$cmd", {"isMaster": 1, "compression": ["z"],
                             "saslSupportedMechs": "admin.alice"}),
]


def _mongo_all(data: bytes) -> None:
    msg = mongomsg.inspect(data, 1 << 20)
    assert 16 <= msg.header.length == len(data)
    out = mongomsg.strip_handshake(data, msg)
    assert struct.unpack_from("<i", out)[0] == len(out) <= len(data)


def test_mongodb_parsers_give_a_result_or_a_protocol_error() -> None:
    assert _fuzz(_mongo_all, MONGO_SEEDS, (mongo.ProtocolError,)) > 0
