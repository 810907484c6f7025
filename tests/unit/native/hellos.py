"""Genuine and hand-built TLS ClientHellos for the classifier tests."""

from __future__ import annotations

import ssl


def client_hello(
    server_hostname: str | None = "db.example.test",
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> bytes:
    """The bytes Python's own TLS client sends first: a genuine ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def records(hello: bytes) -> list[tuple[int, int, bytes]]:
    """Split TLS bytes into (type, version, payload) records."""
    out, pos = [], 0
    while pos < len(hello):
        length = int.from_bytes(hello[pos + 3 : pos + 5], "big")
        out.append((hello[pos], int.from_bytes(hello[pos + 1 : pos + 3], "big"),
                    hello[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def refragment(handshake: bytes, sizes: list[int], version: int = 0x0301) -> bytes:
    """Re-frame handshake bytes into records of the given payload sizes (last takes the rest)."""
    out, pos = bytearray(), 0
    for size in sizes + [len(handshake)]:
        chunk = handshake[pos : pos + size]
        if not chunk:
            break
        out += bytes([22]) + version.to_bytes(2, "big") + len(chunk).to_bytes(2, "big") + chunk
        pos += len(chunk)
    return bytes(out)


def handshake_of(hello: bytes) -> bytes:
    return b"".join(p for _, _, p in records(hello))


def build_hello(extensions: bytes | None, *, legacy_version: int = 0x0303,
                session_id: bytes = b"", suites: bytes = b"\x13\x01",
                compression: bytes = b"\x00") -> bytes:
    """A hand-built ClientHello handshake message (4-byte header included)."""
    body = (legacy_version.to_bytes(2, "big") + b"\x00" * 32
            + bytes([len(session_id)]) + session_id
            + len(suites).to_bytes(2, "big") + suites
            + bytes([len(compression)]) + compression)
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in names)
    return ext(0, len(entries).to_bytes(2, "big") + entries)


def alpn_ext(*names: bytes) -> bytes:
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, len(entries).to_bytes(2, "big") + entries)


def versions_ext(*versions: int) -> bytes:
    data = b"".join(v.to_bytes(2, "big") for v in versions)
    return ext(43, bytes([len(data)]) + data)
