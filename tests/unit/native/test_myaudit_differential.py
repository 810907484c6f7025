"""The MySQL query-audit tap: csrc/mwi_myaudit.c (through _relay.MyAuditTap) against its
twin _native/myaudit_py.py, record for record, on the same sessions in random chunkings
and on mutated and random input; plus what the records must say.

The long run: MWIPROXY_MYAUDIT_FUZZ=200000 python3 -m pytest -q -p no:cacheprovider \\
    tests/unit/native/test_myaudit_differential.py -k fuzz
"""

from __future__ import annotations

import os
import random

import pytest

from mwiproxy._native import myaudit_py
from mwiproxy._native.pgaudit_py import (
    ST_ERROR,
    ST_OK,
    ST_UNFINISHED,
    TEXT_CAP,
    TRUNCATED,
    UNTRACKED,
    decode,
)

from . import myauditkit as kit

try:
    from mwiproxy._native._relay import MyAuditTap as CTap
except ImportError:
    CTap = None

FUZZ_N = int(os.environ.get("MWIPROXY_MYAUDIT_FUZZ", "1500"))
native = [pytest.mark.native_only, pytest.mark.skipif(CTap is None, reason="extension not built")]
TAPS = [pytest.param(myaudit_py.Tap, id="py"), pytest.param(CTap, id="native", marks=native)]


def _records(make, chunks):
    tap = make()
    kit.run(tap, chunks)
    return list(tap.records)


def _decoded(make, chunks):
    return [(decode(r), myaudit_py.code(r)) for r in _records(make, chunks)]


# -- what the records say (both taps) ----------------------------------------------------


@pytest.mark.parametrize("make", TAPS)
def test_query_ok_error_and_result_set(make):
    chunks = [(0, kit.query(b"UPDATE t SET a = 1")), (1, kit.ok(7)),
              (0, kit.query(b"SELEC")), (1, kit.err(1064, b"42000", b"syntax")),
              (0, kit.query(b"SELECT a FROM t")), (1, kit.result_set([b"1", b"22", b"333"]))]
    recs = _decoded(make, chunks)
    kinds = [(r.kind, r.seq) for r, _ in recs]
    assert kinds == [("Q", 1), ("R", 1), ("Q", 2), ("R", 2), ("Q", 3), ("R", 3)]
    assert recs[0][0].fields[0] == (18, b"UPDATE t SET a = 1")
    assert (recs[1][0].aux, recs[1][0].n1) == (ST_OK, 7)
    r, code = recs[3]
    assert (r.aux, code, r.fields[1][1], r.fields[2][1]) == (ST_ERROR, 1064, b"42000", b"syntax")
    r, _ = recs[5]
    assert (r.aux, r.n1, r.n2) == (ST_OK, 3, (2 + 4) + (3 + 4) + (4 + 4))


@pytest.mark.parametrize("make", TAPS)
def test_prepare_execute_close_init_db(make):
    chunks = [(0, kit.prepare(b"SELECT ? + ?")), (1, kit.prepare_ok(42, 1, 2)),
              (0, kit.execute(42)), (1, kit.result_set([b"3"])),
              (0, kit.close(42)), (0, kit.init_db(b"shop")), (1, kit.ok())]
    recs = _decoded(make, chunks)
    assert [r.kind for r, _ in recs] == ["P", "R", "E", "R", "C", "I", "R"]
    assert recs[1][1] == 42 and recs[1][0].aux == ST_OK     # the statement id
    assert recs[2][0].aux == 42 and recs[3][0].n1 == 1
    assert recs[4][0].aux == 42 and recs[4][0].flags & UNTRACKED
    assert recs[5][0].fields[0][1] == b"shop" and recs[6][0].seq == recs[5][0].seq


@pytest.mark.parametrize("make", TAPS)
def test_pipelined_multi_results_and_unfinished(make):
    chunks = [(0, kit.query(b"CALL p()") + kit.query(b"SELECT 2") + kit.query(b"SELECT 3")),
              (1, kit.result_set([b"a"], more=True) + kit.ok(5)),
              (1, kit.result_set([b"b", b"c"])[:-3])]     # the session ends mid-answer
    recs = _decoded(make, chunks)
    results = {r.seq: r for r, _ in recs if r.kind == "R"}
    assert (results[1].aux, results[1].n1) == (ST_OK, 1 + 5)
    assert (results[2].aux, results[2].n1) == (ST_UNFINISHED, 2)
    assert results[3].aux == ST_UNFINISHED


@pytest.mark.parametrize("make", TAPS)
def test_big_statement_cut_at_the_cap_across_packets(make):
    sql = b"SELECT '" + b"x" * (kit.MAX + 10) + b"'"
    recs = _decoded(make, [(0, kit.query(sql)), (1, kit.ok())])
    r = recs[0][0]
    assert r.flags & TRUNCATED and r.fields[0] == (len(sql), sql[:TEXT_CAP])
    assert recs[1][0].aux == ST_OK


# -- C against the twin ------------------------------------------------------------------


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
@pytest.mark.parametrize("seed", range(40))
def test_sessions_same_records(seed):
    rng = random.Random(seed)
    chunks = kit.interleave(rng, kit.session(rng), pipeline=seed % 2 == 1)
    assert _records(CTap, chunks) == _records(myaudit_py.Tap, chunks)
    assert any(decode(r).kind == "R" for r in _records(CTap, chunks))


@pytest.mark.native_only
@pytest.mark.skipif(CTap is None, reason="extension not built")
def test_fuzz_mutated_and_random_same_records():
    rng = random.Random(int(os.environ.get("MWIPROXY_MYAUDIT_FUZZ_SEED", "5")))
    compared = 0
    for i in range(FUZZ_N):
        if i % 3 == 2:
            chunks = [(rng.randrange(2), rng.randbytes(rng.randrange(1, 64)))
                      for _ in range(rng.randrange(1, 20))]
        else:
            chunks = kit.interleave(rng, kit.session(rng, 6), pipeline=True)
            chunks = [(s, kit.mutate(rng, d) if rng.random() < 0.3 else d) for s, d in chunks]
        assert _records(CTap, chunks) == _records(myaudit_py.Tap, chunks), i
        compared += 1
    assert compared == FUZZ_N
