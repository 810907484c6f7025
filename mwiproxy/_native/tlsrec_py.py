"""Pure-Python twin of csrc/mwi_tlsrec.c: the same checks, in the same order.

Used when the extension is not built or MWIPROXY_NO_EXTENSIONS=1; the differential fuzz
test in tests/unit/native holds the two together. Change both or neither.
"""

from __future__ import annotations

from .firstbytes import (
    HTTP_MAX_METHOD,
    KIND_GARBAGE,
    KIND_HTTP,
    KIND_NEED_MORE,
    KIND_PG_CANCEL,
    KIND_PG_GSSENC,
    KIND_PG_SSL,
    KIND_PG_STARTUP,
    KIND_TLS,
    MAX_ALPN,
    MAX_HELLO,
    MAX_NAME,
    MAX_RECORD,
    PG_CANCEL_CODE,
    PG_GSSENC_CODE,
    PG_MAX_CANCEL_KEY,
    PG_MAX_STARTUP,
    PG_SSL_CODE,
    FirstBytes,
)

_CT_HANDSHAKE = 22
_HS_CLIENT_HELLO = 1
_REC_HDR = 5
_HS_HDR = 4
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43


class _Reject(Exception):
    def __init__(self, error: str) -> None:
        self.error = error


class _Reader:
    """Bounded cursor: `data[pos:end]` is what is left."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def u8(self, error: str) -> int:
        if self.left < 1:
            raise _Reject(error)
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self, error: str) -> int:
        if self.left < 2:
            raise _Reject(error)
        self.pos += 2
        return int.from_bytes(self.data[self.pos - 2 : self.pos], "big")

    def sub(self, n: int, error: str) -> _Reader:
        if self.left < n:
            raise _Reject(error)
        self.pos += n
        return _Reader(self.data, self.pos - n, self.pos)

    def rest(self) -> bytes:
        return self.data[self.pos : self.end]


class _Hello:
    __slots__ = ("legacy_version", "sni", "alpn", "versions")

    def __init__(self) -> None:
        self.legacy_version = 0
        self.sni: str | None = None
        self.alpn: list[str] = []
        self.versions: list[int] = []


def _parse_sni(ext: _Reader, hello: _Hello) -> None:
    err = "tls_sni"
    list_len = ext.u16(err)
    if list_len != ext.left or list_len < 1:
        raise _Reject(err)
    while ext.left > 0:
        name_type = ext.u8(err)
        nlen = ext.u16(err)
        if nlen == 0:
            raise _Reject(err)
        name = ext.sub(nlen, err).rest()
        if name_type != 0:
            continue
        if hello.sni is not None:
            raise _Reject(err)
        if nlen > MAX_NAME:
            raise _Reject("tls_sni_too_long")
        if any(c < 0x21 or c > 0x7E for c in name):
            raise _Reject(err)
        hello.sni = name.decode("ascii")


def _parse_alpn(ext: _Reader, hello: _Hello) -> None:
    err = "tls_alpn"
    list_len = ext.u16(err)
    if list_len != ext.left or list_len < 2:
        raise _Reject(err)
    while ext.left > 0:
        nlen = ext.u8(err)
        if nlen == 0:
            raise _Reject(err)
        name = ext.sub(nlen, err).rest()
        if len(hello.alpn) == MAX_ALPN:
            raise _Reject("tls_alpn_too_many")
        hello.alpn.append(name.decode("latin-1"))


def _parse_versions(ext: _Reader, hello: _Hello) -> None:
    err = "tls_supported_versions"
    vlen = ext.u8(err)
    if vlen != ext.left or vlen < 2 or vlen & 1:
        raise _Reject(err)
    while ext.left > 0:
        hello.versions.append(ext.u16(err))


_EXTENSION_PARSERS = {
    _EXT_SERVER_NAME: _parse_sni,
    _EXT_ALPN: _parse_alpn,
    _EXT_SUPPORTED_VERSIONS: _parse_versions,
}


def _parse_extensions(r: _Reader, hello: _Hello) -> None:
    if r.left == 0:
        return  # TLS 1.2 hellos may omit extensions entirely
    err = "tls_extensions_length"
    if r.u16(err) != r.left:
        raise _Reject(err)
    seen: set[int] = set()
    while r.left > 0:
        ext_type = r.u16(err)
        ext = r.sub(r.u16(err), err)
        parser = _EXTENSION_PARSERS.get(ext_type)
        if parser is None:
            continue
        if ext_type in seen:
            raise _Reject("tls_duplicate_extension")
        seen.add(ext_type)
        parser(ext, hello)


def _parse_client_hello(r: _Reader) -> _Hello:
    err = "tls_hello_length"
    hello = _Hello()
    hello.legacy_version = r.u16(err)
    if hello.legacy_version >> 8 != 3:
        raise _Reject("tls_hello_version")
    r.sub(32, err)  # random
    sid_len = r.u8(err)
    if sid_len > 32:
        raise _Reject("tls_session_id")
    r.sub(sid_len, err)
    cs_len = r.u16(err)
    if cs_len < 2 or cs_len & 1:
        raise _Reject("tls_cipher_suites")
    r.sub(cs_len, err)
    cm_len = r.u8(err)
    if cm_len < 1:
        raise _Reject("tls_compression")
    r.sub(cm_len, err)
    _parse_extensions(r, hello)
    return hello


def _classify_tls(buf: bytes) -> FirstBytes:
    n = len(buf)
    hdr = bytearray()
    hs_total = hs_have = pos = 0
    payload: list[bytes] = []
    record_version = 0
    while True:
        left = n - pos
        if left < _REC_HDR:
            if left >= 1 and buf[pos] != _CT_HANDSHAKE:
                raise _Reject("tls_record_type")
            if left >= 2 and buf[pos + 1] != 3:
                raise _Reject("tls_record_version")
            return FirstBytes(KIND_TLS, need=_REC_HDR - left + 1)
        if buf[pos] != _CT_HANDSHAKE:
            raise _Reject("tls_record_type")
        if buf[pos + 1] != 3:
            raise _Reject("tls_record_version")
        rlen = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if rlen == 0 or rlen > MAX_RECORD:
            raise _Reject("tls_record_length")
        if not payload:
            record_version = int.from_bytes(buf[pos + 1 : pos + 3], "big")
        avail = min(left - _REC_HDR, rlen)
        start = pos + _REC_HDR
        if len(hdr) < _HS_HDR:
            hdr += buf[start : start + min(avail, _HS_HDR - len(hdr))]
            if len(hdr) == _HS_HDR:
                if hdr[0] != _HS_CLIENT_HELLO:
                    raise _Reject("tls_not_client_hello")
                hs_total = _HS_HDR + int.from_bytes(hdr[1:4], "big")
                if hs_total > MAX_HELLO:
                    raise _Reject("tls_hello_too_large")
        # the hello must end on a record boundary (RFC 8446 5.1)
        if hs_total and hs_have + rlen > hs_total:
            raise _Reject("tls_trailing_record_data")
        if avail < rlen:
            return FirstBytes(KIND_TLS, need=rlen - avail)
        payload.append(buf[start : start + rlen])
        hs_have += rlen
        pos += _REC_HDR + rlen
        if hs_total and hs_have == hs_total:
            break
    hello_bytes = b"".join(payload)
    hello = _parse_client_hello(_Reader(hello_bytes, _HS_HDR, hs_total))
    return FirstBytes(
        KIND_TLS,
        complete=True,
        consumed=pos,
        record_version=record_version,
        legacy_version=hello.legacy_version,
        sni=hello.sni,
        alpn=tuple(hello.alpn),
        versions=tuple(hello.versions),
    )


def _check_startup_params(m: bytes) -> None:
    p, mlen = 8, len(m)
    while True:
        if p >= mlen:
            raise _Reject("pg_startup")
        if m[p] == 0:
            if p != mlen - 1:
                raise _Reject("pg_startup")
            return
        for _ in ("name", "value"):
            if p >= mlen:
                raise _Reject("pg_startup")
            z = m.find(b"\0", p)
            if z < 0:
                raise _Reject("pg_startup")
            p = z + 1


def _classify_pg(buf: bytes) -> FirstBytes:
    n = len(buf)
    if n >= 4:
        mlen = int.from_bytes(buf[0:4], "big")
        if mlen < 8 or mlen > PG_MAX_STARTUP:
            raise _Reject("pg_length")
    if n < 8:
        return FirstBytes(KIND_NEED_MORE, need=8 - n)
    code = int.from_bytes(buf[4:8], "big")
    if code in (PG_SSL_CODE, PG_GSSENC_CODE):
        if mlen != 8:
            raise _Reject("pg_length")
        kind = KIND_PG_SSL if code == PG_SSL_CODE else KIND_PG_GSSENC
        return FirstBytes(kind, complete=True, consumed=8)
    if code == PG_CANCEL_CODE:
        if mlen < 16 or mlen > 12 + PG_MAX_CANCEL_KEY:
            raise _Reject("pg_length")
        if n < mlen:
            return FirstBytes(KIND_PG_CANCEL, need=mlen - n)
        return FirstBytes(
            KIND_PG_CANCEL,
            complete=True,
            consumed=mlen,
            pg_cancel_pid=int.from_bytes(buf[8:12], "big"),
            pg_cancel_key=bytes(buf[12:mlen]),
        )
    if code >> 16 != 3:
        raise _Reject("pg_protocol")
    if mlen < 9:
        raise _Reject("pg_length")
    if n < mlen:
        return FirstBytes(KIND_PG_STARTUP, need=mlen - n)
    _check_startup_params(buf[:mlen])
    return FirstBytes(KIND_PG_STARTUP, complete=True, consumed=mlen, pg_protocol=code)


def _classify_http(buf: bytes) -> FirstBytes:
    for i, c in enumerate(buf):
        if c == 0x20 and i >= 1:
            return FirstBytes(
                KIND_HTTP, complete=True, consumed=i + 1, http_method=buf[:i].decode("ascii")
            )
        if c < 0x41 or c > 0x5A or i == HTTP_MAX_METHOD:
            raise _Reject("unrecognised")
    return FirstBytes(KIND_NEED_MORE, need=1)


def classify(data: bytes | bytearray | memoryview) -> FirstBytes:
    """Classify the first bytes a client sent (all of them so far). Never raises on input."""
    buf = bytes(data)
    try:
        if not buf:
            return FirstBytes(KIND_NEED_MORE, need=1)
        if buf[0] == _CT_HANDSHAKE:
            return _classify_tls(buf)
        if buf[0] == 0:
            return _classify_pg(buf)
        return _classify_http(buf)
    except _Reject as rej:
        return FirstBytes(KIND_GARBAGE, error=rej.error)
