"""_auditenc (csrc/mwi_auditenc.c: the audit writer's per-event encodings in C) against
its twin auditenc_py: the same canonical JSON (or the same None: not plain) for fixed
and generated fields, the same rows and hashes for generated batches."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import auditenc_py

try:
    from mwiproxy._native import _auditenc
except ImportError:
    _auditenc = None  # type: ignore[assignment]

pytestmark = [pytest.mark.native_only,
              pytest.mark.skipif(_auditenc is None, reason="extension not built")]


class Text(str):
    pass


def _deep(n: int) -> Any:
    v: Any = "leaf"
    for _ in range(n):
        v = [v]
    return v


CYCLE: list[Any] = []
CYCLE.append(CYCLE)

FIXED: list[Any] = [
    {}, {"session": "abc", "query": "SELECT 'é\u2028\U0001f600\x00\x1f\x7f\"\\/'",
         "rows": 1, "duration_ms": 0.001, "ok": True, "no": False, "n": None},
    {"f": math.nan, "g": math.inf, "h": -math.inf, "z": -0.0, "e": 1e300, "s": 5e-324,
     "t": 1796238722.2378361, "i": 1.0},
    {"big": 10**40, "nbig": -(10**40), "edge": 2**63, "nedge": -(2**63), "m": 2**63 - 1},
    {"lone": "\ud800", "wide": "\U0010ffff", "ucs2": "\u0100\uffff", "latin": "\xff\x80"},
    {"b": "x", "a": "y", "B": "z", "\u00e9": 1, "": 2, "a\x00": 3},
    {"nested": {"b": [1, 2.5, (3, "x")], "a": {}}, "t": (), "l": []},
    {"deep7": _deep(7)}, {"deep8": _deep(8)}, {"dict7": {"a": {"a": {"a": {"a": {"a": {
        "a": {"a": 1}}}}}}}},
    {10: "x"}, {"a": {1: "int key"}}, {"b": b"bytes"}, {"set": {1}}, {Text("k"): 1},
    {"k": Text("v")}, {"c": CYCLE}, {"t": True.__class__}, ["not", "a", "dict"], "text", None,
    {"x": 1, "y": [1, {"z": b""}]},
]


@pytest.mark.parametrize("fields", FIXED, ids=range(len(FIXED)))
def test_fixed_fields(fields: Any) -> None:
    assert _auditenc.canonical_fields(fields) == auditenc_py.canonical_fields(fields)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0xd800, max_codepoint=0xdfff)),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSONISH, max_size=10))
def test_generated_fields(fields: dict[str, Any]) -> None:
    assert _auditenc.canonical_fields(fields) == auditenc_py.canonical_fields(fields)


EVENT = st.tuples(st.floats(allow_nan=True) | st.integers(-2**40, 2**40),
                  st.text(max_size=30), st.text(max_size=300), st.none() | st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**62),
       st.lists(EVENT, max_size=8))
def test_generated_batches(prev: bytes, top: int, events: list[Any]) -> None:
    assert _auditenc.chain_rows(prev.hex(), top, events) == \
        auditenc_py.chain_rows(prev.hex(), top, events)
    for args in events:
        assert _auditenc.link_hash(prev.hex(), top + 1, *args[:3]) == \
            auditenc_py.link_hash(prev.hex(), top + 1, *args[:3])


@pytest.mark.parametrize("prev", ["", "ab", "zz" * 32, "AB" * 32, "00" * 33])
def test_odd_heads(prev: str) -> None:
    def answer(f: Any) -> Any:
        try:
            return f(prev, 3, [(1.0, "t", "{}", None)])
        except Exception as e:
            return type(e)
    assert answer(_auditenc.chain_rows) == answer(auditenc_py.chain_rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=3),
       st.lists(st.none() | st.binary(max_size=300), max_size=6),
       st.integers(0, 64))
def test_generated_digests(keys: list[bytes], values: list[Any], nhex: int) -> None:
    for key in keys:  # the native side caches the last key's state: switch between keys
        assert _auditenc.hmac_digests(key, values, "hmac-sha256:", nhex) == \
            auditenc_py.hmac_digests(key, values, "hmac-sha256:", nhex)


def test_digests_of_odd_values() -> None:
    values = [bytearray(b"x"), memoryview(b"y"), b"z", None]
    assert _auditenc.hmac_digests(b"k", values, "p:", 32) == \
        auditenc_py.hmac_digests(b"k", values, "p:", 32)
