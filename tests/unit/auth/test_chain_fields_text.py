"""chain.fields_text's fast path (plain JSON fields encoded once, natively or by the twin) gives the text the
general path (encode, decode, encode canonically) gives, for every input it takes; and
link_hash (one buffer hashed) is the hash of the parts fed one by one."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import canonical_fields
from mwiproxy.auth.storage import chain


def _general(fields: Any) -> str:
    try:
        loose = json.loads(json.dumps(fields, default=str))
    except (TypeError, ValueError) as e:
        loose = {"unencodable_fields": repr(fields)[:8192], "error": str(e)}
    return json.dumps(loose, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


QUERY_EVENT = {"session": "abc", "user": "alice", "session_id": 3, "query": "SELECT 'é\u2028'",
               "query_redacted": False, "truncated": False, "query_len": 55, "rows": 1,
               "duration_ms": 0.001, "status": "ok", "parameters": ["hmac-sha256:ab", None],
               "nested": {"b": [1, 2.5, (3, "x")], "a": {}}}


@pytest.mark.parametrize("fields", [
    QUERY_EVENT, {}, {"f": math.nan, "g": math.inf, "h": -math.inf, "z": -0.0},
    {"big": 10**40, "neg": -1, "t": True, "s": "\ud800 lone surrogate"},
    {10: "x", 2: "y"}, {"a": {1: "int key inside"}}, {"b": b"bytes"}, {"set": {1}},
    {"deep": [[[[[[[[[[["ten deep"]]]]]]]]]]]}, ["not", "a", "dict"], "text",
])
def test_fast_path_agrees(fields: Any) -> None:
    assert chain.fields_text(fields) == _general(fields)


def test_plain_is_only_exact_json_types() -> None:
    plain = canonical_fields  # the build in use (native or twin)
    assert plain(QUERY_EVENT) is not None
    class Text(str):
        pass
    assert plain({Text("k"): 1}) is None
    assert plain({"k": Text("v")}) is None
    cycle: list[Any] = []
    cycle.append(cycle)
    assert plain({"c": cycle}) is None  # bounded depth: the general path
    assert "unencodable_fields" in chain.fields_text({"c": cycle})


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSONISH, max_size=8))
def test_generated_fields_agree(fields: dict[str, Any]) -> None:
    assert chain.fields_text(fields) == _general(fields)


def _link_reference(prev_hash: str, event_id: int, time: float, type_: str, text: str) -> str:
    """link_hash as first written: the parts fed one by one, each after its length."""
    h = hashlib.sha256(bytes.fromhex(prev_hash))
    for part in (str(event_id), repr(float(time)), type_, text):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=2**62), st.floats(allow_nan=False),
       st.text(max_size=30), st.text(max_size=300), st.binary(min_size=32, max_size=32))
def test_link_hash_is_the_chained_hash(event_id: int, time: float, type_: str, text: str,
                                       prev: bytes) -> None:
    for prev_hash in (chain.GENESIS, prev.hex()):
        assert chain.link_hash(prev_hash, event_id, time, type_, text) == \
            _link_reference(prev_hash, event_id, time, type_, text)
