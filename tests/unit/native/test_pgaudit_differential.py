"""The PostgreSQL query-audit tap: csrc/mwi_pgaudit.c (through _relay.PgAuditTap) against
its twin _native/pgaudit_py.py, record for record, on the same sessions in random
chunkings and on mutated and random input; plus what the records must say.

The long run is this file with MWIPROXY_PGAUDIT_FUZZ=1000000 (inputs); CI runs it short:
    MWIPROXY_PGAUDIT_FUZZ=1000000 python3 -m pytest -q -s -p no:cacheprovider --timeout 0 \\
        tests/unit/native/test_pgaudit_differential.py -k long
(MWIPROXY_PGAUDIT_FUZZ_SEED splits it into runs with different inputs.)
"""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import pgaudit_py
from mwiproxy._native.pgaudit_py import decode

from . import pgauditkit as kit

try:
    from mwiproxy._native._relay import PgAuditTap as CTap
except ImportError:
    CTap = None

LONG_N = int(os.environ.get("MWIPROXY_PGAUDIT_FUZZ", "1500"))
LONG_SEED = int(os.environ.get("MWIPROXY_PGAUDIT_FUZZ_SEED", "11"))  # split a long run
native = [pytest.mark.native_only, pytest.mark.skipif(CTap is None, reason="extension not built")]
TAPS = [pytest.param(pgaudit_py.Tap, id="py"),
        pytest.param(CTap, id="native", marks=native)]


def _records(make, chunks, clock=True):
    tap = make()
    back = kit.run(tap, chunks, clock=clock)
    return back, list(tap.records)


def _session_chunks(seed: int, pipeline: bool) -> list[kit.Chunk]:
    rng = random.Random(seed)
    return kit.interleave(rng, kit.session(rng), pipeline)


# -- the twin alone --------------------------------------------------------------------


def _resplit(rng: random.Random, chunks: list[kit.Chunk]) -> list[kit.Chunk]:
    """The same bytes in the same order across sides, cut anew within each chunk."""
    out: list[kit.Chunk] = []
    for side, data in chunks:
        i = 0
        while i < len(data):
            k = rng.choice([1, 2, 7, 100, len(data)])
            out.append((side, data[i:i + k]))
            i += k
    return out


@pytest.mark.parametrize("pipeline", [False, True])
def test_twin_is_chunking_independent(pipeline):
    for seed in range(60):
        chunks = _session_chunks(seed, pipeline)
        again = _resplit(random.Random(seed), chunks)
        # time fixed: the records depend on the bytes only
        assert _records(pgaudit_py.Tap, chunks, clock=False)[1] == \
            _records(pgaudit_py.Tap, again, clock=False)[1]


# -- C against the twin ----------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_native_matches_twin_on_sessions(seed, pipeline):
    for k in range(40):
        chunks = _session_chunks(seed * 1000 + k, pipeline)
        assert _records(CTap, chunks) == _records(pgaudit_py.Tap, chunks)


def _mutated_chunks(rng: random.Random) -> list[kit.Chunk]:
    chunks = kit.interleave(rng, kit.session(rng, rng.randrange(1, 6)), rng.random() < 0.5)
    if not chunks:
        return chunks
    i = rng.randrange(len(chunks))
    side, data = chunks[i]
    chunks[i] = (side, kit.mutate(rng, data))
    return chunks


def _fuzz(n: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(n):
        if i and i % 50_000 == 0:  # the long run's progress (seen with -s)
            print(f"{i} inputs agree", file=sys.stderr, flush=True)
        chunks = _mutated_chunks(rng) if rng.random() < 0.8 else [
            (rng.randrange(2), rng.randbytes(rng.randrange(1, 64))) for _ in range(4)]
        assert _records(CTap, chunks) == _records(pgaudit_py.Tap, chunks), chunks


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_native_matches_twin_on_mutated_input():
    _fuzz(300, 5)


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_native_matches_twin_long():
    _fuzz(LONG_N, LONG_SEED)


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=40)),
                max_size=8))
def test_native_matches_twin_on_any_bytes(chunks):
    assert _records(CTap, chunks) == _records(pgaudit_py.Tap, chunks)


# -- what the records say (both builds) ------------------------------------------------


@pytest.fixture(params=TAPS)
def tap(request):
    return request.param()


def _decoded(tap, chunks):
    kit.run(tap, chunks)
    return [decode(r) for r in tap.records]


def test_simple_query_result_summary(tap):
    recs = _decoded(tap, [(0, kit.query("select g")),
                          (1, kit.msg(b"T", b"\0\0") + kit.row(b"1") + kit.row(b"22")
                           + kit.complete("SELECT 2") + kit.RFQ)])
    q, r = recs
    assert (q.kind, q.seq, q.fields) == ("Q", 1, ((8, b"select g"),))
    assert (r.kind, r.seq, r.aux, r.n1) == ("R", 1, pgaudit_py.ST_OK, 2)
    assert r.n2 == len(kit.row(b"1") + kit.row(b"22")) and r.fields[0] == (8, b"SELECT 2")
    assert r.n3 == 1000  # fed at 0, answered at 1000


def test_extended_error_skips_to_sync(tap):
    client = (kit.parse("s", "select $1") + kit.bind("", "s", [b"a", None]) + kit.execute()
              + kit.parse("", "select 2") + kit.bind("", "", []) + kit.execute() + kit.SYNC)
    server = kit.error("22P02", "bad") + kit.RFQ  # the first Parse fails
    recs = _decoded(tap, [(0, client), (1, server)])
    results = {r.seq: r for r in recs if r.kind == "R"}
    assert results[1].aux == pgaudit_py.ST_ERROR and results[1].fields[1] == (5, b"22P02")
    assert [results[s].aux for s in range(2, 7)] == [pgaudit_py.ST_SKIPPED] * 5
    bind = next(r for r in recs if r.kind == "B")
    assert bind.aux == 2 and bind.fields[3:] == ((1, b"a"), (0, None))


def test_pipelined_executes_pair_in_order(tap):
    client = b"".join(kit.bind("", "s", []) + kit.execute() for _ in range(3)) + kit.SYNC
    server = b"".join(kit.msg(b"2") + kit.row(b"x") * n + kit.complete(f"SELECT {n}")
                      for n in (1, 2, 3)) + kit.RFQ
    recs = _decoded(tap, [(0, client), (1, server)])
    rows = [(r.seq, r.n1) for r in recs if r.kind == "R"]
    assert rows == [(2, 1), (4, 2), (6, 3)]


def test_big_statement_is_truncated_and_streams(tap):
    sql = "select '" + "x" * (1 << 20) + "'"
    data = kit.query(sql)
    chunks = [(0, data[i:i + 65536]) for i in range(0, len(data), 65536)]
    back = kit.run(tap, chunks)
    assert back == [len(c) for _, c in chunks]
    q = decode(tap.records[0])
    assert q.truncated and q.fields[0][0] == len(sql) and len(q.fields[0][1]) == 16384


def test_malformed_length_stops_before_the_message(tap):
    good = kit.query("select 1")
    back = kit.run(tap, [(0, good + b"Q\0\0\0\2" + b"rest")])
    assert back == [len(good)]
    [m] = [r for r in map(decode, tap.records) if r.kind == "M"]
    assert (m.aux, m.n1) == (pgaudit_py.BAD_LENGTH, len(good))
    assert tap.feed(0, b"more", 0) == 0  # dead from there


def test_unknown_client_type_is_malformed(tap):
    assert kit.run(tap, [(0, b"x\0\0\0\4")]) == [0]
    assert decode(tap.records[0]).aux == pgaudit_py.BAD_TYPE


def test_fields_overrunning_their_message_are_malformed(tap):
    kit.run(tap, [(0, kit.msg(b"Q", b"no terminator"))])
    assert decode(tap.records[0]).aux == pgaudit_py.BAD_FIELDS


def test_fifo_overflow_marks_requests_untracked_then_recovers(tap):
    n = pgaudit_py.FIFO_MAX + 10
    client = kit.query("select 1") * n
    server = (kit.complete("SELECT 0") + kit.RFQ) * n
    kit.run(tap, [(0, client), (1, server), (0, kit.query("select 2")),
                  (1, kit.complete("SELECT 0") + kit.RFQ)])
    recs = [decode(r) for r in tap.records]
    untracked = [r for r in recs if r.kind == "Q" and r.flags & pgaudit_py.UNTRACKED]
    assert len(untracked) == 10
    assert recs[-1].kind == "R" and recs[-1].seq == n + 1  # tracked again


def test_unfinished_requests_end_with_the_session(tap):
    kit.run(tap, [(0, kit.query("select pg_sleep(10)"))])
    r = decode(tap.records[-1])
    assert (r.kind, r.aux) == ("R", pgaudit_py.ST_UNFINISHED)
