from __future__ import annotations

import asyncio

import pytest

from mwiproxy import _native
from mwiproxy.wire import postgres as pg


def _parse(read, data: bytes):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await read(r)

    return asyncio.run(main())


def test_startup_round_trip_and_classification():
    raw = pg.build_startup({"user": "alice", "database": "example-db"})
    assert pg.parse_startup(raw) == {"user": "alice", "database": "example-db"}
    assert _native.classify(raw).kind == _native.KIND_PG_STARTUP
    first = _parse(pg.read_first_packet, raw + b"rest")
    assert first.is_startup and first.raw == raw


def test_ssl_request_and_cancel():
    assert _native.classify(pg.ssl_request()).kind == _native.KIND_PG_SSL
    key = pg.CancelKey(pid=-5, secret=0xFFFFFFFF)
    raw = pg.build_cancel(key)
    assert _native.classify(raw).kind == _native.KIND_PG_CANCEL
    assert pg.parse_cancel(raw) == key
    assert _parse(pg.read_first_packet, raw).is_cancel


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x00\x04\x00\x03\x00\x00",  # too short
    b"\x7f\x00\x00\x00\x00\x03\x00\x00",  # too long
    b"\x00\x00\x00\x10\x00\x03",  # ends early
])
def test_bad_first_packets(raw):
    with pytest.raises(pg.ProtocolError):
        _parse(pg.read_first_packet, raw)


def test_unterminated_startup_is_refused():
    with pytest.raises(pg.ProtocolError):
        pg.parse_startup(pg.build_startup({"user": "a"})[:-1])


def test_error_response_fields():
    msg = pg.error_response('access to db denied: user "bob"')
    assert msg[:1] == b"E"
    fields = pg.parse_error_fields(msg[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28000",
                      "M": 'access to db denied: user "bob"'}
    parsed = _parse(pg.read_backend_message, msg)
    assert parsed.type == b"E" and parsed.raw == msg


def test_backend_key_data():
    body = (1234).to_bytes(4, "big") + (99).to_bytes(4, "big")
    msg = _parse(pg.read_backend_message, b"K" + (12).to_bytes(4, "big") + body)
    assert msg.cancel_key == pg.CancelKey(1234, 99)
