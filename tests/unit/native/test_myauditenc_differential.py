"""Answered MySQL COM_QUERYs straight from tap records: _auditenc.mysql_query_texts
against its twin myauditenc_py (the same records taken, the same texts, the same
`queries` left), over the real tap's records (myaudit_py.Tap) and hand-built ones (cut,
NULL, short, unknown status, other kinds); and the twin's texts against the per-command
fields written out again here, as canonical_fields encodes them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import auditenc_py, myaudit_py, myauditenc_py
from mwiproxy._native.pgaudit_py import FIELD_HEAD, NULL, RECORD_HEAD, STATUS_NAMES
from tests.unit.native import myauditkit as kit

try:
    from mwiproxy._native import _auditenc
except ImportError:
    _auditenc = None  # type: ignore[assignment]

native = pytest.mark.skipif(_auditenc is None, reason="extension not built")
IMPLS = [myauditenc_py, pytest.param(_auditenc, marks=native, id="native")]


def _statements(field: tuple[int, bytes], truncated: bool) -> myauditenc_py.Statement:
    """A stand-in for StatementTexts: the text and length written out, plain JSON."""
    full, text = field
    return ({"query": text.hex()},
            f'"query":{json.dumps(text.decode("latin-1"))},"query_len":{full}',
            "true" if truncated else "false")


def _drain(impl: Any, records: list[Any], queries: dict[int, Any],
           cache: dict[Any, Any] | None = None) -> tuple[list[int], list[str]]:
    """As MySQLQueryAudit.on_records: each record left over is skipped (its handler)."""
    done: list[str] = []
    left, i = [], 0
    cache = {} if cache is None else cache
    while (i := impl.mysql_query_texts(records, i, queries, cache, _statements, done)) \
            < len(records):
        left.append(i)
        i += 1
    return left, done


def _query(seq: int, text: bytes, flags: int = 0, full: int | None = None,
           kept: int | None = None) -> bytes:
    return (RECORD_HEAD.pack(ord("Q"), flags, 1, seq, 0, 0, 0, 0, 0)
            + FIELD_HEAD.pack(len(text) if full is None else full,
                              len(text) if kept is None else kept) + text)


def _result(seq: int, status: int, rows: int, size: int, took: int) -> bytes:
    return (RECORD_HEAD.pack(ord("R"), 0, 3, seq, status, 7, rows, size, took)
            + FIELD_HEAD.pack(0, 0) * 3)


SEQS = st.integers(0, 5) | st.integers(0, 2 ** 32 - 1)
# durations (ns): any, ties (…500 ns: the double decides), and around 10**15 (where the
# native build stops rounding the integer itself)
TOOK = (st.integers(0, 2 ** 64 - 1) | st.integers(0, 10 ** 9).map(lambda k: k * 1000 + 500)
        | st.integers(10 ** 15 - 3000, 10 ** 15 + 3000) | st.integers(0, 10 ** 7))
RECORD = st.one_of(
    st.builds(_query, SEQS, st.binary(max_size=40), st.sampled_from([0, 1, 4, 5])),
    st.builds(_query, SEQS, st.binary(max_size=8), st.just(0),
              st.sampled_from([NULL, 0, 3, 100]), st.sampled_from([None, 0, 9, 2 ** 32 - 1])),
    st.builds(_result, SEQS, st.integers(0, 8), st.integers(0, 2 ** 64 - 1),
              st.integers(0, 2 ** 64 - 1), TOOK),
    st.binary(max_size=60),
    st.sampled_from([b"", b"R", b"Q" * 48, b"P" + b"\0" * 47]),
)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=400, deadline=None)
@given(st.lists(RECORD, max_size=30), st.dictionaries(SEQS, st.just(None), max_size=3),
       st.lists(st.tuples(st.binary(max_size=8), st.integers(0, 9), st.booleans()),
                max_size=3))
def test_native_equals_twin(impl, records, known, cached):
    seeded = {seq: _statements((seq, b"seeded"), False) for seq in known}
    cache: dict[Any, myauditenc_py.Statement] = {
        key: ({}, f'"cached":{i}', "false") for i, key in enumerate(cached)}
    want_q, got_q = dict(seeded), dict(seeded)
    assert _drain(impl, records, got_q, dict(cache)) == \
        _drain(myauditenc_py, records, want_q, dict(cache))
    assert got_q == want_q


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=500, deadline=None)
@given(st.lists(TOOK, min_size=1, max_size=20))
def test_durations_are_written_as_round_then_repr(impl, took):
    records = [r for i, t in enumerate(took)
               for r in (_query(i + 1, b"q"), _result(i + 1, 0, 0, 0, t))]
    _, done = _drain(impl, records, {})
    assert [json.loads(d)["duration_ms"] for d in done] == [round(t / 1e6, 3) for t in took]
    assert [d.split('"duration_ms":')[1].split(",")[0] for d in done] == [
        repr(round(t / 1e6, 3)) for t in took]


@pytest.mark.parametrize("impl", IMPLS)
def test_records_not_bytes_are_left_to_the_caller(impl):
    q = _query(1, b"select 1")
    assert _drain(impl, [bytearray(q), q, memoryview(q), None], {}) == ([0, 2, 3], [])


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), st.integers(0, 300),
                          st.integers(0, 10 ** 12)), min_size=1, max_size=8))
def test_the_real_taps_records_give_each_commands_canonical_fields(impl, queries):
    """Through the real tap: every request then result pair taken, each text what
    canonical_fields writes for the command's fields (as a per-command dict had them)."""
    tap = myaudit_py.Tap()
    for sql, affected, took in queries:
        tap.feed(0, kit.query(sql), 0)
        tap.feed(1, kit.ok(affected), took)
    pending: dict[int, Any] = {}
    left, done = _drain(impl, tap.records, pending)
    assert left == [] and pending == {}
    for text, (sql, affected, took) in zip(done, queries, strict=True):
        assert text == auditenc_py.canonical_fields(
            {"bytes": 0, "command": "COM_QUERY", "duration_ms": round(took / 1e6, 3),
             "query": sql.decode("latin-1"), "query_len": len(sql), "rows": affected,
             "status": STATUS_NAMES[0], "truncated": False})


@pytest.mark.parametrize("impl", IMPLS)
def test_a_failed_or_unknown_result_stops_where_it_is(impl):
    records = [_query(1, b"a"), _query(2, b"b"), _result(2, 1, 0, 0, 0),
               _result(1, 0, 5, 6, 7_000_000), _result(9, 0, 0, 0, 0)]
    pending: dict[int, Any] = {}
    left, done = _drain(impl, records, pending)
    assert left == [2, 4] and list(pending) == [2]  # the failure: the caller's
    assert done == ['{"bytes":6,"command":"COM_QUERY","duration_ms":7.0,"query":"a",'
                    '"query_len":1,"rows":5,"status":"ok","truncated":false}']
