"""The Redis query-audit tap: csrc/mwi_rdsaudit.c (through _relay.RdsAuditTap) against its
twin _native/rdsaudit_py.py, record for record, on command streams in random chunkings
and on mutated and random input; plus what the records must say.

The long run: MWIPROXY_RDSAUDIT_FUZZ=200000 python3 -m pytest -q -p no:cacheprovider \\
    tests/unit/native/test_rdsaudit_differential.py -k fuzz
"""

from __future__ import annotations

import os
import random

import pytest

from mwiproxy._native import rdsaudit_py
from mwiproxy._native.pgaudit_py import PARAMS_OMITTED, TRUNCATED, decode

from . import myauditkit

try:
    from mwiproxy._native._relay import RdsAuditTap as CTap
except ImportError:
    CTap = None

FUZZ_N = int(os.environ.get("MWIPROXY_RDSAUDIT_FUZZ", "1500"))
native = [pytest.mark.native_only, pytest.mark.skipif(CTap is None, reason="extension not built")]
TAPS = [pytest.param(rdsaudit_py.Tap, id="py"), pytest.param(CTap, id="native", marks=native)]


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _stream(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(1, 10)):
        k = rng.randrange(5)
        if k == 0:
            out += b"PING\r\n" if rng.random() < 0.5 else b"  get  key\n"
        elif k == 1:
            out += command(b"AUTH", b"alice", rng.randbytes(rng.randrange(30)))
        elif k == 2:
            out += command(b"SET", b"k", rng.randbytes(rng.choice([0, 5, 300, 2000])))
        elif k == 3:
            out += command(b"MSET", *[rng.randbytes(3) for _ in range(rng.randrange(40))])
        else:
            out += b"*0\r\n" + command(rng.randbytes(rng.randrange(100)))
    return out


def _records(make, chunks):
    tap = make()
    for side, data in chunks:
        assert tap.feed(side, data, 1) == len(data)
    tap.end(2)
    return list(tap.records)


@pytest.mark.parametrize("make", TAPS)
def test_commands_are_recorded(make):
    big = b"v" * 1000
    chunks = [(0, command(b"SET", b"key", big) + b"PING\r\n"), (1, b"+OK\r\n+PONG\r\n"),
              (0, command(b"DEL", *[b"k%d" % i for i in range(20)]))]
    recs = [decode(r) for r in _records(make, chunks)]
    assert [(r.kind, r.seq, r.aux) for r in recs] == [("K", 1, 2), ("K", 2, 0), ("K", 3, 20)]
    assert recs[0].fields == ((3, b"SET"), (3, b"key"), (1000, big[:256]))
    assert recs[0].flags & TRUNCATED
    assert recs[1].flags & rdsaudit_py.INLINE and recs[1].fields == ((4, b"PING"),)
    assert recs[2].flags & PARAMS_OMITTED and len(recs[2].fields) == 1 + 16


@pytest.mark.parametrize("make", TAPS)
def test_a_broken_multibulk_stops_the_tap(make):
    recs = _records(make, [(0, command(b"GET", b"a") + b"*2\r\n+x\r\n" + command(b"GET"))])
    assert [decode(r).fields[0][1] for r in recs] == [b"GET"]


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
@pytest.mark.parametrize("seed", range(30))
def test_streams_same_records(seed):
    rng = random.Random(seed)
    chunks = myauditkit.cut(rng, 0, _stream(rng))
    assert _records(CTap, chunks) == _records(rdsaudit_py.Tap, chunks)


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_fuzz_mutated_and_random_same_records():
    rng = random.Random(int(os.environ.get("MWIPROXY_RDSAUDIT_FUZZ_SEED", "7")))
    for i in range(FUZZ_N):
        if i % 3 == 2:
            chunks = [(0, rng.randbytes(rng.randrange(1, 64))) for _ in range(rng.randrange(1, 9))]
        else:
            chunks = [(0, myauditkit.mutate(rng, d) if rng.random() < 0.3 else d)
                      for _, d in myauditkit.cut(rng, 0, _stream(rng))]
        assert _records(CTap, chunks) == _records(rdsaudit_py.Tap, chunks), i
