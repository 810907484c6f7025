"""_relay.pgaudit_decode (a tap record decoded in C, what proxy/queryaudit.py uses in the
native build) against its twin pgaudit_py.decode: the same Record for every record the
taps make on generated sessions, and the same answer (or error) for cut and mutated
records."""

from __future__ import annotations

import random

import pytest

from mwiproxy._native import pgaudit_py

from . import pgauditkit as kit

try:
    from mwiproxy._native._relay import PgAuditTap as CTap
    from mwiproxy._native._relay import pgaudit_decode
except ImportError:
    CTap = pgaudit_decode = None

pytestmark = [pytest.mark.native_only,
              pytest.mark.skipif(CTap is None, reason="extension not built")]


def _answer(decode, rec):
    try:
        return decode(rec)
    except Exception as e:  # the same error type and message
        return (type(e), str(e))


def _records(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks = kit.interleave(rng, kit.session(rng), rng.random() < 0.5)
    out: list[bytes] = []
    for make in (pgaudit_py.Tap, CTap):
        tap = make()
        kit.run(tap, chunks)
        out += tap.records
    return out


@pytest.mark.parametrize("seed", range(40))
def test_same_records_on_generated_sessions(seed: int) -> None:
    records = _records(seed)
    assert records
    for rec in records:
        got = pgaudit_decode(rec)
        assert got == pgaudit_py.decode(rec) and type(got) is pgaudit_py.Record


@pytest.mark.parametrize("seed", range(10))
def test_same_answer_on_cut_and_mutated_records(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for rec in _records(seed):
        for bad in (rec[:rng.randrange(len(rec) + 1)], kit.mutate(rng, rec),
                    bytearray(rec), memoryview(rec)):
            assert _answer(pgaudit_decode, bad) == _answer(pgaudit_py.decode, bad)


def test_null_and_empty_fields() -> None:
    tap = pgaudit_py.Tap()
    kit.run(tap, [(0, kit.parse("", "select $1") + kit.bind("", "", [None, b""]) + kit.SYNC)])
    bind = [r for r in tap.records if r[:1] == b"B"]
    assert bind and pgaudit_decode(bind[0]) == pgaudit_py.decode(bind[0])
    assert (0, None) in pgaudit_decode(bind[0]).fields


@pytest.mark.parametrize("seed", range(20))
def test_same_records_from_the_mysql_and_redis_taps(seed: int) -> None:
    """The MySQL and Redis audits decode their taps' records (the same layout) with
    pgaudit_decode too."""
    from mwiproxy._native import myaudit_py, rdsaudit_py
    from mwiproxy._native._relay import MyAuditTap, RdsAuditTap

    from . import myauditkit
    from .test_rdsaudit_differential import _stream

    rng = random.Random(2000 + seed)
    records: list[bytes] = []
    chunks = myauditkit.interleave(rng, myauditkit.session(rng, 8), pipeline=True)
    for make in (myaudit_py.Tap, MyAuditTap):
        tap = make()
        myauditkit.run(tap, chunks)
        records += tap.records
    stream = _stream(rng)
    for make in (rdsaudit_py.Tap, RdsAuditTap):
        tap = make()
        tap.feed(0, stream, 1)
        tap.end(2)
        records += tap.records
    assert records
    for rec in records:
        got = pgaudit_decode(rec)
        assert got == pgaudit_py.decode(rec) and type(got) is pgaudit_py.Record
        for bad in (rec[:rng.randrange(len(rec) + 1)], myauditkit.mutate(rng, rec)):
            assert _answer(pgaudit_decode, bad) == _answer(pgaudit_py.decode, bad)
