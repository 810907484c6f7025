"""The classifier on non-TLS first bytes: PostgreSQL, HTTP and garbage."""

from __future__ import annotations

import struct

import pytest

from mwiproxy._native import (
    KIND_GARBAGE,
    KIND_HTTP,
    KIND_NEED_MORE,
    KIND_PG_CANCEL,
    KIND_PG_GSSENC,
    KIND_PG_SSL,
    KIND_PG_STARTUP,
)

from .conftest import Classify


def startup(params: bytes = b"user\0alice\0database\0db\0\0", proto: int = 0x00030000) -> bytes:
    return struct.pack("!II", 8 + len(params), proto) + params


SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSS_REQUEST = struct.pack("!II", 8, 80877104)
CANCEL = struct.pack("!IIII", 16, 80877102, 4242, 0xDEADBEEF)


def test_ssl_request(classify: Classify) -> None:
    fb = classify(SSL_REQUEST)
    assert (fb.kind, fb.complete, fb.consumed) == (KIND_PG_SSL, True, 8)


def test_ssl_request_followed_by_hello_consumes_only_8(classify: Classify) -> None:
    assert classify(SSL_REQUEST + b"\x16\x03\x01").consumed == 8


def test_gssenc_request(classify: Classify) -> None:
    assert classify(GSS_REQUEST).kind == KIND_PG_GSSENC


def test_cancel_request(classify: Classify) -> None:
    fb = classify(CANCEL)
    assert (fb.kind, fb.complete, fb.pg_cancel_pid) == (KIND_PG_CANCEL, True, 4242)
    assert fb.pg_cancel_key == struct.pack("!I", 0xDEADBEEF)


def test_cancel_request_long_key_protocol_32(classify: Classify) -> None:
    key = bytes(range(256))
    fb = classify(struct.pack("!III", 12 + 256, 80877102, 7) + key)
    assert fb.complete and fb.pg_cancel_key == key
    too_long = classify(struct.pack("!III", 12 + 257, 80877102, 7))
    assert too_long.error == "pg_length"


def test_startup_message(classify: Classify) -> None:
    msg = startup()
    fb = classify(msg)
    assert (fb.kind, fb.complete, fb.consumed, fb.pg_protocol) == (
        KIND_PG_STARTUP, True, len(msg), 0x00030000)


def test_startup_protocol_32_and_no_params(classify: Classify) -> None:
    assert classify(startup(b"\0", 0x00030002)).pg_protocol == 0x00030002


def test_startup_truncations(classify: Classify) -> None:
    msg = startup()
    for cut in range(1, len(msg)):
        fb = classify(msg[:cut])
        assert fb.error is None and not fb.complete and fb.need >= 1
        assert fb.kind == (KIND_NEED_MORE if cut < 8 else KIND_PG_STARTUP)
        if cut >= 8:
            assert fb.need == len(msg) - cut


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (struct.pack("!I", 7), "pg_length"),
        (struct.pack("!I", 10001), "pg_length"),
        (struct.pack("!II", 12, 80877103), "pg_length"),
        (struct.pack("!II", 12, 80877104), "pg_length"),
        (struct.pack("!II", 8, 80877102), "pg_length"),
        (struct.pack("!II", 8, 0x00030000), "pg_length"),
        (struct.pack("!II", 20, 0x00020000), "pg_protocol"),
        (struct.pack("!II", 20, 1234), "pg_protocol"),
        (startup(b"user\0alice\0"), "pg_startup"),
        (startup(b"user\0alice"), "pg_startup"),
        (startup(b"user\0"), "pg_startup"),
        (startup(b"\0\0"), "pg_startup"),
        (startup(b"user\0alice\0\0x"), "pg_startup"),
        (startup(b"x" * 9000 + b"\0\0\0"), None),
    ],
)
def test_postgres_errors(classify: Classify, data: bytes, error: str | None) -> None:
    fb = classify(data)
    if error is None:
        assert fb.complete
    else:
        assert (fb.kind, fb.error) == (KIND_GARBAGE, error)


@pytest.mark.parametrize("method", ["GET", "POST", "PRI", "CONNECT", "A" * 16])
def test_http(classify: Classify, method: str) -> None:
    fb = classify(method.encode() + b" / HTTP/1.1\r\n")
    assert (fb.kind, fb.http_method, fb.consumed) == (KIND_HTTP, method, len(method) + 1)


def test_http_partial_method_needs_more(classify: Classify) -> None:
    fb = classify(b"GE")
    assert (fb.kind, fb.need) == (KIND_NEED_MORE, 1)


@pytest.mark.parametrize(
    "data",
    [b"A" * 17 + b" ", b" GET", b"get /", b"GET\t/", b"\xff\xfe", b"\x80\x2e\x01",
     b"SSH-2.0-OpenSSH\r\n", b"\x17\x03\x03\x00\x10", b"*1\r\n$4\r\nPING\r\n"],
)
def test_garbage(classify: Classify, data: bytes) -> None:
    assert (classify(data).kind, classify(data).error) == (KIND_GARBAGE, "unrecognised")


def test_empty_needs_one_byte(classify: Classify) -> None:
    fb = classify(b"")
    assert (fb.kind, fb.need, fb.complete) == (KIND_NEED_MORE, 1, False)
