"""MySQL wire packets the proxies need to refuse a connection: the ERR_Packet.

Every MySQL packet is a 3-byte little-endian payload length, a 1-byte sequence id, then
the payload. The server speaks first, so a refusal is an ERR_Packet sent as sequence 0
where the client expects the initial handshake; clients (libmysqlclient, MariaDB
Connector/C, PyMySQL, Go's driver) read it as a connection error and show its message.

ERR_Packet payload: 0xFF, error code (uint16 LE), '#' + 5-character SQLSTATE, message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_PAYLOAD = 0xFFFFFF
# clients copy the message into a 512-byte buffer (MYSQL_ERRMSG_SIZE): more is lost
MAX_MESSAGE = 512
ERR_HEADER = 0xFF

# error codes (server errors 1xxx, client errors 2xxx) and their SQLSTATEs
ER_ACCESS_DENIED = 1045
ER_UNKNOWN_ERROR = 1105
ER_CONNECTION_KILLED = 1927
ACCESS_DENIED_STATE = "28000"
GENERAL_ERROR_STATE = "HY000"
KILLED_STATE = "70100"

_HEADER = struct.Struct("<I")  # 3 length bytes + the sequence id


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Packet:
    sequence: int
    payload: bytes


@dataclass(frozen=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str


def packet(payload: bytes, sequence: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a MySQL packet holds at most {MAX_PAYLOAD} bytes")
    if not 0 <= sequence <= 0xFF:
        raise ValueError(f"sequence id {sequence} is not a byte")
    return _HEADER.pack(len(payload) | sequence << 24) + payload


def split_packet(data: bytes, max_payload: int = MAX_PAYLOAD) -> tuple[Packet, bytes] | None:
    """The first packet in `data` and the bytes after it; None if it is incomplete.
    ProtocolError if its length is over `max_payload`."""
    if len(data) < _HEADER.size:
        return None
    (word,) = _HEADER.unpack_from(data)
    length, sequence = word & MAX_PAYLOAD, word >> 24
    if length > max_payload:
        raise ProtocolError(f"MySQL packet of {length} bytes exceeds {max_payload}")
    end = _HEADER.size + length
    if len(data) < end:
        return None
    return Packet(sequence, bytes(data[_HEADER.size:end])), bytes(data[end:])


def err_packet(code: int, sqlstate: str, message: str, sequence: int = 0) -> bytes:
    """An ERR_Packet (protocol 4.1 form); the message is cut to what clients keep."""
    if len(sqlstate) != 5 or not sqlstate.isascii():
        raise ValueError(f"SQLSTATE {sqlstate!r} is not 5 ASCII characters")
    text = message.encode("utf-8")[:MAX_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    body = bytes([ERR_HEADER]) + struct.pack("<H", code) + b"#" + sqlstate.encode() + text
    return packet(body, sequence)


def parse_err(payload: bytes) -> ErrPacket:
    """Decode an ERR_Packet payload (with or without the SQLSTATE marker)."""
    if len(payload) < 3 or payload[0] != ERR_HEADER:
        raise ProtocolError("not an ERR_Packet")
    (code,) = struct.unpack_from("<H", payload, 1)
    rest, sqlstate = payload[3:], ""
    if rest[:1] == b"#":
        if len(rest) < 6:
            raise ProtocolError("ERR_Packet truncated inside its SQLSTATE")
        sqlstate, rest = rest[1:6].decode("ascii", "replace"), rest[6:]
    return ErrPacket(code, sqlstate, rest.decode("utf-8", "replace"))
