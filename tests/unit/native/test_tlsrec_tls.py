"""The classifier on TLS: genuine ClientHellos, fragmentation, truncation and every cap."""

from __future__ import annotations

import dataclasses
import ssl

import pytest

from mwiproxy._native import KIND_GARBAGE, KIND_TLS

from .conftest import Classify
from .hellos import (
    alpn_ext,
    build_hello,
    client_hello,
    ext,
    handshake_of,
    refragment,
    sni_ext,
    versions_ext,
)

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def test_tls13_hello_with_sni_and_alpn(classify: Classify) -> None:
    hello = client_hello("pg.cluster.test", ["mwi-postgres", "mwi-postgres-ping"])
    fb = classify(hello)
    assert (fb.kind, fb.complete, fb.error) == (KIND_TLS, True, None)
    assert fb.consumed == len(hello)
    assert fb.sni == "pg.cluster.test"
    assert fb.alpn == ("mwi-postgres", "mwi-postgres-ping")
    assert fb.versions[0] == 0x0304 and 0x0303 in fb.versions
    assert fb.legacy_version == 0x0303
    assert fb.record_version >> 8 == 3


def test_tls12_only_hello(classify: Classify) -> None:
    fb = classify(client_hello("a.test", ["h2"], max_version=TLS12, min_version=TLS12))
    assert fb.complete and fb.sni == "a.test" and fb.alpn == ("h2",)
    assert 0x0304 not in fb.versions


def test_hello_without_sni_or_alpn(classify: Classify) -> None:
    fb = classify(client_hello(None))
    assert fb.complete and fb.sni is None and fb.alpn == ()


def test_trailing_bytes_after_hello_are_not_consumed(classify: Classify) -> None:
    hello = client_hello()
    fb = classify(hello + b"\x17\x03\x03garbage")
    assert fb.complete and fb.consumed == len(hello)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100, 511])
def test_hello_fragmented_over_records(classify: Classify, size: int) -> None:
    hello = client_hello("frag.test", ["a", "bb"])
    hs = handshake_of(hello)
    framed = refragment(hs, [size] * (len(hs) // size))
    fb = classify(framed)
    assert fb.complete and fb.consumed == len(framed)
    assert fb == dataclasses.replace(classify(hello), consumed=len(framed))


def test_one_byte_feeds_converge(classify: Classify) -> None:
    """Feeding byte by byte: always TLS-incomplete with need >= 1, then complete."""
    hello = refragment(handshake_of(client_hello("x.test", ["p"])), [3, 1, 7, 200])
    got = b""
    while True:
        fb = classify(got)
        if fb.complete:
            break
        assert fb.error is None and fb.need >= 1
        assert fb.kind == (KIND_TLS if got else "need_more")
        assert len(got) + fb.need <= len(hello)  # never asks for more than the hello
        got = hello[: len(got) + 1]
    assert got == hello and fb.sni == "x.test"


def test_need_lets_caller_read_whole_records(classify: Classify) -> None:
    hello = refragment(handshake_of(client_hello()), [50, 50])
    got, calls = hello[:1], 0
    while not (fb := classify(got)).complete:
        got = hello[: len(got) + fb.need]
        calls += 1
    assert calls <= 8


def test_every_truncation_is_incomplete_never_an_error(classify: Classify) -> None:
    hello = refragment(handshake_of(client_hello("t.test", ["a"])), [10, 1, 300])
    for cut in range(1, len(hello)):
        fb = classify(hello[:cut])
        assert fb.kind == KIND_TLS and not fb.complete and fb.need >= 1, cut


def test_accepts_bytearray_and_memoryview(classify: Classify) -> None:
    hello = client_hello()
    assert classify(bytearray(hello)) == classify(memoryview(hello)) == classify(hello)


def _framed(hs: bytes) -> bytes:
    return refragment(hs, [])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x17\x03\x01\x00\x05hello", None),  # not a handshake: not TLS-first at all
        (b"\x16\x02", "tls_record_version"),
        (b"\x16\x03\x01\x00\x00", "tls_record_length"),
        (b"\x16\x03\x01\x40\x01", "tls_record_length"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "tls_not_client_hello"),
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", "tls_hello_too_large"),
        (b"\x16\x03\x01\x00\x05\x01\x00\x00\x00\x00", "tls_trailing_record_data"),
        (b"\x16\x03\x01\x00\x01\x01\x17", "tls_record_type"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "tls_hello_length"),
    ],
)
def test_record_layer_errors(classify: Classify, data: bytes, error: str | None) -> None:
    fb = classify(data)
    if error is None:
        assert fb.kind == KIND_GARBAGE and fb.error == "unrecognised"
    else:
        assert (fb.kind, fb.error) == (KIND_GARBAGE, error)


def test_record_of_max_size_accepted(classify: Classify) -> None:
    pad = ext(21, b"\x00" * 16000)
    hs = build_hello(sni_ext((0, b"big.test")) + pad)
    fb = classify(refragment(hs, [16384]))
    assert fb.complete and fb.sni == "big.test"


def test_hello_at_64k_cap(classify: Classify) -> None:
    body_len = 65536 - 4
    fixed = 2 + 32 + 1 + 2 + 2 + 1 + 1 + 2
    pad = ext(21, b"\x00" * (body_len - fixed - 4))
    hs = build_hello(pad)
    assert len(hs) == 65536
    assert classify(refragment(hs, [16384] * 4)).complete
    over = build_hello(ext(21, b"\x00" * (body_len - fixed - 3)))
    assert classify(refragment(over, [16384] * 5)).error == "tls_hello_too_large"


@pytest.mark.parametrize(
    ("hs", "error"),
    [
        (build_hello(None, legacy_version=0x0203), "tls_hello_version"),
        (build_hello(None, session_id=b"\x00" * 33), "tls_session_id"),
        (build_hello(None, suites=b""), "tls_cipher_suites"),
        (build_hello(None, suites=b"\x13\x01\x00"), "tls_cipher_suites"),
        (build_hello(None, compression=b""), "tls_compression"),
        (build_hello(b"\x00\x00\x00"), "tls_extensions_length"),
        (build_hello(ext(0, b"")[:-1] + b"\x05"), "tls_extensions_length"),
        (build_hello(sni_ext((0, b"a")) + sni_ext((0, b"b"))), "tls_duplicate_extension"),
        (build_hello(alpn_ext(b"a") + alpn_ext(b"b")), "tls_duplicate_extension"),
        (build_hello(versions_ext(0x304) * 2), "tls_duplicate_extension"),
        (build_hello(ext(0, b"")), "tls_sni"),
        (build_hello(ext(0, b"\x00\x00")), "tls_sni"),
        (build_hello(sni_ext((0, b"a"), (0, b"b"))), "tls_sni"),
        (build_hello(sni_ext((0, b""))), "tls_sni"),
        (build_hello(sni_ext((0, b"bad name"))), "tls_sni"),
        (build_hello(sni_ext((0, b"\x80x"))), "tls_sni"),
        (build_hello(sni_ext((0, b"a" * 256))), "tls_sni_too_long"),
        (build_hello(ext(16, b"\x00\x00")), "tls_alpn"),
        (build_hello(ext(16, b"\x00\x02\x00\x00")), "tls_alpn"),
        (build_hello(ext(16, b"\x00\x03\x05ab")), "tls_alpn"),
        (build_hello(alpn_ext(*[b"p%d" % i for i in range(65)])), "tls_alpn_too_many"),
        (build_hello(ext(43, b"\x03\x03\x04\x03")), "tls_supported_versions"),
        (build_hello(ext(43, b"\x00")), "tls_supported_versions"),
        (build_hello(ext(43, b"\x04\x03\x04")), "tls_supported_versions"),
    ],
)
def test_client_hello_errors(classify: Classify, hs: bytes, error: str) -> None:
    fb = classify(_framed(hs))
    assert (fb.kind, fb.error, fb.complete) == (KIND_GARBAGE, error, False)


def test_caps_at_their_limit_are_accepted(classify: Classify) -> None:
    alpn = [b"%d" % i + b"x" * 250 for i in range(32)]
    hs = build_hello(
        sni_ext((1, b"other-type-skipped"), (0, b"n" * 255))
        + alpn_ext(*alpn)
        + versions_ext(*range(0x0300, 0x0300 + 127))
        + ext(0xFFFF, b"unknown")
    )
    fb = classify(refragment(hs, [16384] * 4))
    assert fb.complete and fb.sni == "n" * 255
    assert fb.alpn == tuple(a.decode() for a in alpn)
    assert len(fb.versions) == 127


def test_alpn_names_round_trip_any_byte(classify: Classify) -> None:
    fb = classify(_framed(build_hello(alpn_ext(bytes(range(1, 256)), b"\x00"))))
    assert [n.encode("latin-1") for n in fb.alpn] == [bytes(range(1, 256)), b"\x00"]


def test_tls12_hello_without_extensions(classify: Classify) -> None:
    fb = classify(_framed(build_hello(None)))
    assert fb.complete and fb.versions == () and fb.sni is None
