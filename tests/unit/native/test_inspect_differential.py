"""The inspection framers: csrc/mwi_inspect.c (through _relay.Framer) against its twin
_native/inspect_py.py, on the same streams in different chunkings, plus what any framer
must do whatever the stream (never alter a byte, never forward a held one).

The long run is this file with MWIPROXY_INSPECT_FUZZ=1000000 (inputs per protocol);
CI runs it short:
    MWIPROXY_INSPECT_FUZZ=1000000 python3 -m pytest -q -p no:cacheprovider \\
        tests/unit/native/test_inspect_differential.py -k long
"""

from __future__ import annotations

import os
import random
import struct

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import inspect_py

from .inspectkit import chunked, decisions, stream
from .mongokit import ALLOWED, mongo_message

try:
    from mwiproxy._native._relay import Framer as CFramer
except ImportError:
    CFramer = None

PROTOCOLS = ["resp", "mysql", "mongodb"]
LONG_N = int(os.environ.get("MWIPROXY_INSPECT_FUZZ", "3000"))

native = [pytest.mark.native_only,
          pytest.mark.skipif(CFramer is None, reason="extension not built")]


def _check_invariants(data: bytes, events: list[tuple[str, bytes]]) -> None:
    """Forwarded and held bytes are the stream's own bytes, in order, nothing added;
    what is left over is an unfinished message (or what follows a violation): at most
    a window, or (mongodb: its `$db` past the window) a message still being read whole."""
    seen = b"".join(body for _, body in events)
    assert data.startswith(seen)
    if not events or events[-1][0] != "violation":
        rest = data[len(seen):]
        if len(rest) > inspect_py.MAX_HELD + inspect_py.PRE_MAX:
            assert struct.unpack_from("<i", rest)[0] > len(rest)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_twin_alone_is_chunking_independent(protocol):
    rng = random.Random(7)
    for _ in range(400):
        data = stream(protocol, rng)
        whole = decisions(inspect_py.Framer(protocol, ALLOWED), [data])
        _check_invariants(data, whole)
        assert decisions(inspect_py.Framer(protocol, ALLOWED), chunked(data, rng)) == whole


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.long
@pytest.mark.native_only
@pytest.mark.skipif(CFramer is None, reason="extension not built")
def test_long_differential_run(protocol, seed):
    """LONG_N inputs per protocol (split over the seeds): C and twin, each in its own
    random chunking, agree on every decision."""
    rng = random.Random(seed * 1000 + len(protocol))
    differ = 0
    for _ in range(LONG_N // 2):
        data = stream(protocol, rng)
        want = decisions(inspect_py.Framer(protocol, ALLOWED), chunked(data, rng))
        got = decisions(CFramer(protocol, ALLOWED), chunked(data, rng))
        differ += got != want
        assert got == want, data[:400]
    assert differ == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.native_only
@pytest.mark.skipif(CFramer is None, reason="extension not built")
@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), raw=st.binary(max_size=200),
       cuts=st.lists(st.integers(1, 64), max_size=20))
def test_hypothesis_c_and_twin_agree(protocol, seed, raw, cuts):
    """Generated streams and raw bytes, cut where hypothesis says."""
    rng = random.Random(seed)
    for data in (stream(protocol, rng), raw, stream(protocol, rng) + raw):
        chunks, pos = [], 0
        for size in cuts:
            chunks.append(data[pos:pos + size])
            pos += size
        chunks.append(data[pos:])
        want = decisions(inspect_py.Framer(protocol, ALLOWED), [data])
        _check_invariants(data, want)
        assert decisions(CFramer(protocol, ALLOWED), chunks) == want
        assert decisions(inspect_py.Framer(protocol, ALLOWED), chunks) == want


CASES = [
    ("resp", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", [("fwd", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")]),
    ("resp", b"*1\r\n$5\r\nhElLo\r\n*0\r\n",
     [("hold", b"*1\r\n$5\r\nhElLo\r\n"), ("fwd", b"*0\r\n")]),
    ("resp", b"*-7\r\nPING\n", [("fwd", b"*-7\r\n"), ("hold", b"PING\n")]),
    ("resp", b"*1\r\n$5\r\nRESET\r\n", [("hold", b"*1\r\n$5\r\nRESET\r\n")]),
    ("resp", b"*1\r\n$4\r\nAUTHX", [("violation", b"")]),  # held AUTH, no \r\n: none of it
    ("resp", b"*1\r\n$5\r\nAUTHX\r\n", [("fwd", b"*1\r\n$5\r\nAUTHX\r\n")]),
    ("resp", b"*01\r\n", [("violation", b"")]),
    ("resp", b"*1\r\n$-0\r\n", [("violation", b"")]),
    ("resp", b"*-9223372036854775808\r\n", [("fwd", b"*-9223372036854775808\r\n")]),
    ("resp", b"*-9223372036854775809\r\n", [("violation", b"")]),
    ("resp", b"*1048577\r\n", [("violation", b"")]),
    ("resp", b"GET \x00k\n", [("violation", b"")]),
    ("resp", b"*2\r\n$3\r\nSET\r\n$2\r\nab\n\n",
     [("fwd", b"*2\r\n$3\r\nSET\r\n$2\r\nab"), ("violation", b"")]),  # the bad byte stays
    ("mysql", b"\x01\x00\x00\x00\x0e\x07\x00\x00\x00\x02testdb",
     [("fwd", b"\x01\x00\x00\x00\x0e"), ("hold", b"\x07\x00\x00\x00\x02testdb")]),
    ("mysql", b"\x02\x00\x00\x03\x11x", [("fwd", b"\x02\x00\x00\x03\x11x")]),
    ("mysql", b"\x00\x00\x00\x00\x01\x00\x00\x00\x11",
     [("fwd", b"\x00\x00\x00\x00"), ("hold", b"\x01\x00\x00\x00\x11")]),
    ("mysql", b"\xfd\xff\x00\x00\x02", [("violation", b"")]),  # 65533 + 4 > 64 KiB
]


@pytest.mark.parametrize("protocol,data,want", CASES)
@pytest.mark.parametrize("impl", [
    pytest.param(inspect_py.Framer, id="py"),
    pytest.param(CFramer, id="native", marks=native),
])
def test_known_streams(impl, protocol, data, want):
    for step in (len(data), 1, 3):
        chunks = [data[i:i + step] for i in range(0, len(data), step)]
        assert decisions(impl(protocol, ALLOWED), chunks) == want


def _mongo(doc: bytes, opcode: int = 2013, flags: int = 0, tail: bytes = b"") -> bytes:
    body = struct.pack("<I", flags) + b"\x00" + doc + tail
    return struct.pack("<iiii", 16 + len(body), 1, 0, opcode) + body


def _doc(*elements: bytes) -> bytes:
    raw = b"".join(elements)
    return struct.pack("<i", len(raw) + 5) + raw + b"\0"


def _str(name: bytes, value: bytes) -> bytes:
    return b"\x02" + name + b"\0" + struct.pack("<i", len(value) + 1) + value + b"\0"


FIND_APP = _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")))
MONGO_CASES = [
    (FIND_APP + FIND_APP, [("fwd", FIND_APP + FIND_APP)]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"admin"))),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"admin"))))]),
    (_mongo(_doc(_str(b"saslStart", b"c"), _str(b"$db", b"app"))),
     [("hold", _mongo(_doc(_str(b"saslStart", b"c"), _str(b"$db", b"app"))))]),
    (_mongo(_doc(_str(b"aGgregate", b"c"), _str(b"$db", b"app"))),
     [("hold", _mongo(_doc(_str(b"aGgregate", b"c"), _str(b"$db", b"app"))))]),
    (_mongo(_doc(_str(b"findx", b"c"), _str(b"$db", b"app"))),
     [("fwd", _mongo(_doc(_str(b"findx", b"c"), _str(b"$db", b"app"))))]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app"), _str(b"$db", b"app"))),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app"), _str(b"$db", b"app"))))]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), flags=1),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), flags=1))]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), flags=0x10002),
     [("fwd", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), flags=0x10002))]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), opcode=2004),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app")), opcode=2004))]),
    (FIND_APP + struct.pack("<iiii", 15, 0, 0, 2013), [("fwd", FIND_APP), ("violation", b"")]),
    (struct.pack("<iiii", 16, 0, 0, 2013), [("hold", struct.pack("<iiii", 16, 0, 0, 2013))]),
    # a kind-1 sequence past the window: the body came first, the message streams
    (_mongo(_doc(_str(b"insert", b"c"), _str(b"$db", b"app")),
            tail=b"\x01" + struct.pack("<i", 70_010) + b"d\0" + b"x" * 70_004),
     [("fwd", _mongo(_doc(_str(b"insert", b"c"), _str(b"$db", b"app")),
                     tail=b"\x01" + struct.pack("<i", 70_010) + b"d\0" + b"x" * 70_004))]),
    # `$db` past the window (pymongo writes it last): read whole and judged whole
    (_mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000), _str(b"$db", b"app"))),
     [("fwd", _mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000),
                          _str(b"$db", b"app"))))]),
    (_mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000), _str(b"$db", b"admin"))),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000),
                           _str(b"$db", b"admin"))))]),
    # ... its window passed already: a second `$db` past it is the server's to refuse
    (_mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app"), _str(b"f", b"v" * 70_000),
                 _str(b"$db", b"admin"))),
     [("fwd", _mongo(_doc(_str(b"find", b"c"), _str(b"$db", b"app"),
                          _str(b"f", b"v" * 70_000), _str(b"$db", b"admin"))))]),
    # no `$db` at all in a long message: held whole, for Python to refuse
    (_mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000))),
     [("hold", _mongo(_doc(_str(b"find", b"c"), _str(b"f", b"v" * 70_000))))]),
]


@pytest.mark.parametrize("data,want", MONGO_CASES)
@pytest.mark.parametrize("impl", [
    pytest.param(inspect_py.Framer, id="py"),
    pytest.param(CFramer, id="native", marks=native),
])
def test_known_mongo_streams(impl, data, want):
    for step in (len(data), 1, 7):
        chunks = [data[i:i + step] for i in range(0, len(data), step)]
        assert decisions(impl("mongodb", ("app",)), chunks) == want


@pytest.mark.native_only
@pytest.mark.skipif(CFramer is None, reason="extension not built")
@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(1, 300), max_size=20),
       max_message=st.sampled_from([16, 40, 300, 70_000, 48_000_000]))
def test_hypothesis_mongo_limits(seed, cuts, max_message):
    """C and twin agree whatever the message size limit."""
    rng = random.Random(seed)
    data = stream("mongodb", rng)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(data[pos:pos + size])
        pos += size
    chunks.append(data[pos:])
    want = decisions(inspect_py.Framer("mongodb", ALLOWED, max_message), [data])
    _check_invariants(data, want)
    assert decisions(CFramer("mongodb", ALLOWED, max_message), chunks) == want


def _oracle(message: bytes) -> bool | None:
    """Whether the server's reading lets `message` through (None: not a well-formed
    OP_MSG with valid BSON, or a duplicate `$db`: no verdict here)."""
    length, _, _, opcode = struct.unpack_from("<iiii", message)
    if length != len(message) or opcode != 2013 or length < 21:
        return False if length == len(message) and length >= 16 else None
    if struct.unpack_from("<I", message, 16)[0] & 0xFFFD:
        return False
    pos, bodies = 20, []
    while pos < length:
        kind = message[pos]
        if kind not in (0, 1) or pos + 5 > length:
            return None
        size = struct.unpack_from("<i", message, pos + 1)[0]
        if size < 5 or pos + 1 + size > length:
            return None
        if kind == 0:
            bodies.append(message[pos + 1:pos + 1 + size])
        pos += 1 + size
    if len(bodies) != 1 or bodies[0].count(b"$db\0") > 1:
        return None
    try:
        doc = bson.decode(bodies[0])
    except Exception:
        return None
    if not doc:
        return False
    command = next(iter(doc))
    return command.lower() not in ("authenticate", "saslstart", "saslcontinue", "logout",
                                   "getnonce", "copydbsaslstart", "copydbgetnonce", "hello",
                                   "ismaster", "aggregate", "mapreduce") \
        and isinstance(doc.get("$db"), str) and doc["$db"] in ALLOWED


def test_twin_agrees_with_a_bson_decoder():
    """On well-formed messages the judge reads `$db` and the command as pymongo's bson
    does (the server's reading)."""
    rng = random.Random(11)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        message = mongo_message(rng)
        if len(message) < 16:
            continue
        verdict = _oracle(message)
        if verdict is None:
            continue
        got = decisions(inspect_py.Framer("mongodb", ALLOWED), [message])
        assert got == ([("fwd", message)] if verdict else [("hold", message)]), message[:300]
        seen[verdict] += 1
    assert seen[True] > 300 and seen[False] > 300
