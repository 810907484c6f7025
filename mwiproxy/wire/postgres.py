"""PostgreSQL wire messages the proxies need: the untyped first packets (SSLRequest,
StartupMessage, CancelRequest) and the few typed backend messages read during startup.

Only what routing, authorization and cancel forwarding need is parsed; everything after
ReadyForQuery is relayed untouched.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Protocol

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3 = 196608
MAX_STARTUP = 10000
MAX_BACKEND_STARTUP_MESSAGE = 1 << 20

SSL_YES = b"S"
SSL_NO = b"N"

# SQLSTATE codes used in refusals
INVALID_AUTHORIZATION = "28000"
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT = "08001"
ADMIN_SHUTDOWN = "57P01"

_I32 = struct.Struct(">i")
_HEADER = struct.Struct(">iI")
_CANCEL = struct.Struct(">iIiI")


class ProtocolError(Exception):
    pass


class Reader(Protocol):
    """Anything with asyncio.StreamReader's readexactly (IncompleteReadError at EOF)."""

    async def readexactly(self, n: int) -> bytes: ...


@dataclass(frozen=True)
class FirstPacket:
    """An untyped client packet: SSLRequest, GSSENCRequest, CancelRequest or startup."""

    code: int
    raw: bytes

    @property
    def is_ssl_request(self) -> bool:
        return self.code == SSL_REQUEST_CODE

    @property
    def is_gssenc_request(self) -> bool:
        return self.code == GSSENC_REQUEST_CODE

    @property
    def is_cancel(self) -> bool:
        return self.code == CANCEL_REQUEST_CODE

    @property
    def is_startup(self) -> bool:
        return self.code >> 16 == 3


@dataclass(frozen=True)
class CancelKey:
    pid: int
    secret: int


async def read_first_packet(reader: Reader) -> FirstPacket:
    try:
        header = await reader.readexactly(8)
        length, code = _HEADER.unpack(header)
        if not 8 <= length <= MAX_STARTUP:
            raise ProtocolError(f"startup packet length {length} is out of range")
        body = await reader.readexactly(length - 8)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection ended inside the startup packet") from None
    return FirstPacket(code, header + body)


def parse_startup(raw: bytes) -> dict[str, str]:
    """The key/value parameters of a StartupMessage (user, database, options, ...)."""
    parts = raw[8:].split(b"\0")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolError("startup message is not terminated")
    fields = parts[:-2]
    if len(fields) % 2:
        raise ProtocolError("startup message has a key without a value")
    try:
        return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}
    except UnicodeDecodeError:
        raise ProtocolError("startup parameters are not UTF-8") from None


def build_startup(params: dict[str, str], protocol: int = PROTOCOL_3) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return _HEADER.pack(8 + len(body), protocol) + body


def ssl_request() -> bytes:
    return _HEADER.pack(8, SSL_REQUEST_CODE)


def parse_cancel(raw: bytes) -> CancelKey:
    if len(raw) != 16:
        raise ProtocolError("a CancelRequest is 16 bytes")
    _, _, pid, secret = _CANCEL.unpack(raw)
    return CancelKey(pid, secret)


def build_cancel(key: CancelKey) -> bytes:
    return _CANCEL.pack(16, CANCEL_REQUEST_CODE, key.pid, key.secret)


def error_response(message: str, sqlstate: str = INVALID_AUTHORIZATION,
                   severity: str = "FATAL") -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    body = b"".join(tag + value.encode() + b"\0" for tag, value in fields) + b"\0"
    return b"E" + _I32.pack(4 + len(body)) + body


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter tag."""
    out = {}
    for item in body.split(b"\0"):
        if item:
            out[chr(item[0])] = item[1:].decode(errors="replace")
    return out


@dataclass(frozen=True)
class BackendMessage:
    type: bytes
    body: bytes

    @property
    def raw(self) -> bytes:
        return self.type + _I32.pack(4 + len(self.body)) + self.body

    @property
    def auth_code(self) -> int:
        return int(_I32.unpack_from(self.body)[0]) if self.type == b"R" else -1

    @property
    def cancel_key(self) -> CancelKey:
        pid, secret = struct.unpack(">iI", self.body[:8])
        return CancelKey(pid, secret)


async def read_backend_message(reader: Reader) -> BackendMessage:
    try:
        header = await reader.readexactly(5)
        (length,) = _I32.unpack_from(header, 1)
        if not 4 <= length <= MAX_BACKEND_STARTUP_MESSAGE:
            raise ProtocolError(f"backend message length {length} is out of range")
        body = await reader.readexactly(length - 4)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the database closed the connection during startup") from None
    return BackendMessage(header[:1], body)
