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
