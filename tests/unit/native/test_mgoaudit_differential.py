"""The MongoDB query-audit tap: csrc/mwi_mgoaudit.c (through _relay.MgoAuditTap) against
its twin _native/mgoaudit_py.py, record for record, on sessions in random chunkings, on
mutated and random input (hypothesis too); plus what the records must say.

The long run: MWIPROXY_MGOAUDIT_FUZZ=200000 python3 -m pytest -q -p no:cacheprovider \\
    tests/unit/native/test_mgoaudit_differential.py -k fuzz
"""

from __future__ import annotations

import os
import random
import struct

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import mgoaudit_py
from mwiproxy._native.pgaudit_py import (
    ST_ERROR,
    ST_OK,
    ST_UNFINISHED,
    TRUNCATED,
    UNTRACKED,
    decode,
)

from . import myauditkit
from .mgoauditkit import message, op_compressed, op_msg, op_query, op_reply, session

try:
    from mwiproxy._native._relay import MgoAuditTap as CTap
except ImportError:
    CTap = None

FUZZ_N = int(os.environ.get("MWIPROXY_MGOAUDIT_FUZZ", "1500"))
native = [pytest.mark.native_only, pytest.mark.skipif(CTap is None, reason="extension not built")]
TAPS = [pytest.param(mgoaudit_py.Tap, id="py"), pytest.param(CTap, id="native", marks=native)]


def _records(make, chunks):
    tap = make()
    for i, (side, data) in enumerate(chunks):
        assert tap.feed(side, data, 1000 * (i + 1)) == len(data)
    tap.end(10 ** 9)
    return list(tap.records)


def _code(raw: bytes) -> int:
    return struct.unpack_from("<I", raw, 12)[0]


@pytest.mark.parametrize("make", TAPS)
def test_commands_and_replies(make):
    batch = [{"a": i} for i in range(3)]
    chunks = [(0, op_msg(7, {"find": "orders", "filter": {"x": 1}, "$db": "app"})),
              (1, op_msg(0, {"cursor": {"firstBatch": batch, "id": 0}, "ok": 1.0}, to=7)),
              (0, op_msg(8, {"insert": "orders", "$db": "app"},
                         seqs=(("documents", [{"a": 1}]),))),
              (1, op_msg(0, {"ok": 0.0, "errmsg": "no", "code": 13}, to=8)),
              (0, op_msg(9, {"ping": 1, "$db": "admin"}))]
    raws = _records(make, chunks)
    recs = [decode(r) for r in raws]
    assert [(r.kind, r.seq) for r in recs] == [("Q", 1), ("R", 1), ("Q", 2), ("R", 2),
                                               ("Q", 3), ("R", 3)]
    q = recs[0]
    assert [f[1] for f in q.fields[:3]] == [b"app", b"find", b"orders"]
    assert bson.decode(q.fields[3][1]) == {"find": "orders", "filter": {"x": 1}, "$db": "app"}
    assert (q.aux, q.n3) == (2013, 7)
    assert (recs[1].aux, recs[1].n1, recs[1].flags & mgoaudit_py.ROWS) == (ST_OK, 3, 32)
    assert (recs[3].aux, _code(raws[3]), recs[3].fields[0][1]) == (ST_ERROR, 13, b"no")
    assert recs[5].aux == ST_UNFINISHED


@pytest.mark.parametrize("make", TAPS)
def test_secrets_are_never_recorded(make):
    chunks = [(0, op_msg(1, {"saslStart": 1, "payload": b"pencil", "$db": "admin"})),
              (0, op_msg(2, {"createUser": "bob", "pwd": "hunter2", "$db": "admin"})),
              (0, op_query(3, "admin.$cmd", {"isMaster": 1,
                                             "speculativeAuthenticate": {"p": "pencil"}}))]
    raws = _records(make, chunks)
    for raw in raws:
        assert b"pencil" not in raw and b"hunter2" not in raw
    recs = [decode(r) for r in raws if r[0] == ord("Q")]
    assert all(r.flags & mgoaudit_py.SECRET for r in recs)
    assert [r.fields[1][1] for r in recs] == [b"saslStart", b"createUser", b"isMaster"]


@pytest.mark.parametrize("make", TAPS)
def test_legacy_compressed_and_bounds(make):
    big = {"find": "c", "filter": {"v": "x" * 40000}, "$db": "app"}
    chunks = [(0, op_query(1, "app.coll", {"a": 1})), (1, op_reply(1, {"$err": "e", "code": 2}, 2)),
              (0, op_compressed(2, op_msg(2, {"ping": 1}), 3)),
              (0, op_msg(3, big)), (0, op_msg(4, {"x": 1}, flags=2)),
              (0, message(2013, 5, b"\0\0\0\0\0\4\0\0\0"))]
    recs = [decode(r) for r in _records(make, chunks)]
    assert [f[1] for f in recs[0].fields[:3]] == [b"app", b"find", b"coll"]
    assert recs[1].kind == "R" and recs[1].aux == ST_ERROR
    assert recs[2].fields[1][1] == b"<compressed>" and recs[2].n2 == 3 | 2013 << 8
    big_q = recs[3]
    assert big_q.flags & TRUNCATED and big_q.fields[3][0] > 40000
    assert len(big_q.fields[3][1]) == mgoaudit_py.DOC_CAP and big_q.fields[0][1] == b""
    assert recs[4].flags & UNTRACKED
    assert recs[5].flags & mgoaudit_py.UNPARSED


@pytest.mark.parametrize("make", TAPS)
def test_a_bad_length_is_malformed(make):
    ok = op_msg(1, {"ping": 1, "$db": "a"})
    recs = [decode(r) for r in _records(make, [(0, ok + struct.pack("<iiii", 8, 2, 0, 2013)
                                                + ok)])]
    assert [r.kind for r in recs] == ["Q", "M", "R"]
    assert (recs[1].aux, recs[1].n1) == (1, len(ok))


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
@pytest.mark.parametrize("seed", range(40))
def test_sessions_same_records(seed):
    chunks = session(random.Random(seed))
    assert _records(CTap, chunks) == _records(mgoaudit_py.Tap, chunks)


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_fuzz_mutated_and_random_same_records():
    rng = random.Random(int(os.environ.get("MWIPROXY_MGOAUDIT_FUZZ_SEED", "7")))
    for i in range(FUZZ_N):
        if i % 4 == 3:
            chunks = [(rng.randrange(2), rng.randbytes(rng.randrange(1, 64)))
                      for _ in range(rng.randrange(1, 9))]
        else:
            chunks = [(s, myauditkit.mutate(rng, d) if rng.random() < 0.2 else d)
                      for s, d in session(rng)]
        assert _records(CTap, chunks) == _records(mgoaudit_py.Tap, chunks), i


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=60)),
                min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(0, 10 ** 6))
def test_hypothesis_same_records(chunks, edits, seed):
    base = session(random.Random(seed))[:6]
    for at, value in edits:  # a structured session, bytes overwritten
        if base:
            side, data = base[at % len(base)]
            b = bytearray(data)
            b[at % len(b)] = value
            base[at % len(base)] = (side, bytes(b))
    for c in (chunks, base, base + chunks):
        assert _records(CTap, c) == _records(mgoaudit_py.Tap, c)
