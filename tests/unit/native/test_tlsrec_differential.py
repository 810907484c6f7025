"""Differential fuzzing: the native and pure-Python classifiers must agree on every input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mwiproxy._native import tlsrec_py

from .hellos import client_hello, handshake_of, refragment

_tlsrec = pytest.importorskip("mwiproxy._native._tlsrec", reason="extension not built")
pytestmark = pytest.mark.native_only

SEEDS = [
    client_hello("seed.test", ["mwi-postgres", "h2"]),
    refragment(handshake_of(client_hello(None, ["x"])), [7, 1, 40]),
    b"\x00\x00\x00\x19\x00\x03\x00\x00user\x00alice\x00\x00",
    b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\xde\xad\xbe\xef",
    b"GET / HTTP/1.1\r\n",
]


def agree(data: bytes) -> None:
    assert _tlsrec.classify(data) == tlsrec_py.classify(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 2, 0x20, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_agree_on_mutated_genuine_inputs(data: bytes) -> None:
    agree(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_agree_on_random_bytes(data: bytes) -> None:
    agree(data)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from([b"\x16\x03", b"\x16\x03\x01", b"\x00\x00", b"\x00\x00\x00"]),
       st.binary(max_size=200))
def test_agree_on_random_bytes_behind_a_plausible_prefix(prefix: bytes, rest: bytes) -> None:
    agree(prefix + rest)


def test_agree_on_every_prefix_of_the_seeds() -> None:
    for seed in SEEDS:
        for cut in range(len(seed) + 1):
            agree(seed[:cut])
