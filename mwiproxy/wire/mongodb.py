"""MongoDB wire messages the proxies need to refuse a connection.

Every message starts with a 16-byte little-endian header: messageLength (all of it,
header included), requestID, responseTo, opCode. A driver opens with a handshake
command (`hello` / `isMaster`) as OP_QUERY on `admin.$cmd` or as OP_MSG; a refusal
answers it in kind (OP_REPLY to OP_QUERY, OP_MSG to OP_MSG) with responseTo set and the
command error document `{ok: 0.0, errmsg, code, codeName}`, which drivers raise with
its errmsg.

The documents are BSON; the few element types needed here are encoded by hand so the
runtime needs no BSON library. Decoding is bounded and strict: lengths must agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

OP_REPLY = 1
OP_COMPRESSED = 2012
OP_QUERY = 2004
OP_MSG = 2013
MAX_MESSAGE = 48_000_000  # maxMessageSizeBytes of every server
HEADER_SIZE = 16
MAX_DEPTH = 32

MSG_CHECKSUM_PRESENT = 1 << 0
MSG_MORE_TO_COME = 1 << 1

# command error codes (mongo's error_codes.yml)
HOST_UNREACHABLE = (6, "HostUnreachable")
UNAUTHORIZED = (13, "Unauthorized")

_HEADER = struct.Struct("<iiii")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

Document = dict[str, Any]


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Header:
    length: int
    request_id: int
    response_to: int
    op_code: int


@dataclass(frozen=True)
class Request:
    header: Header
    command: str  # the first key of the command document ("hello", "isMaster", ...)
    expects_reply: bool = True


def parse_header(data: bytes, max_length: int = MAX_MESSAGE) -> Header:
    if len(data) < HEADER_SIZE:
        raise ProtocolError("a MongoDB message header is 16 bytes")
    header = Header(*_HEADER.unpack_from(data))
    if not HEADER_SIZE <= header.length <= max_length:
        raise ProtocolError(f"MongoDB message of {header.length} bytes "
                            f"(must be 16 to {max_length})")
    return header


def parse_request(message: bytes) -> Request:
    """A whole client message: OP_QUERY or OP_MSG (anything else is a ProtocolError)."""
    header = parse_header(message)
    if header.length != len(message):
        raise ProtocolError(f"message says {header.length} bytes, has {len(message)}")
    body = message[HEADER_SIZE:]
    if header.op_code == OP_QUERY:
        return Request(header, first_key(_query_document(body)))
    if header.op_code == OP_MSG:
        flags, document = _msg_body(body)
        return Request(header, first_key(document), not flags & MSG_MORE_TO_COME)
    raise ProtocolError(f"unexpected opCode {header.op_code} from a client")


def _query_document(body: bytes) -> bytes:
    end = body.find(b"\0", 4)  # after the flags: fullCollectionName
    if end < 0 or len(body) < end + 9:
        raise ProtocolError("OP_QUERY truncated")
    return _document_at(body, end + 9)  # skip numberToSkip, numberToReturn


def _msg_body(body: bytes) -> tuple[int, bytes]:
    """flagBits and the kind-0 section's document of an OP_MSG body."""
    if len(body) < 5:
        raise ProtocolError("OP_MSG truncated")
    (flags,) = _U32.unpack_from(body)
    end = len(body) - (4 if flags & MSG_CHECKSUM_PRESENT else 0)
    pos = 4
    while pos < end:
        kind = body[pos]
        if kind == 0:
            return flags, _document_at(body[:end], pos + 1)
        if kind != 1 or pos + 5 > end:
            raise ProtocolError(f"OP_MSG section of kind {kind}")
        (size,) = _I32.unpack_from(body, pos + 1)
        if size < 4:
            raise ProtocolError("OP_MSG document sequence of a bad size")
        pos += 1 + size
    raise ProtocolError("OP_MSG without a body section")


def _document_at(data: bytes, pos: int) -> bytes:
    if len(data) < pos + 5:
        raise ProtocolError("BSON document truncated")
    (size,) = _I32.unpack_from(data, pos)
    if size < 5 or pos + size > len(data):
        raise ProtocolError("BSON document length out of bounds")
    return data[pos:pos + size]


# -- replies -----------------------------------------------------------------------------

def error_document(message: str, code: tuple[int, str] = UNAUTHORIZED) -> Document:
    return {"ok": 0.0, "errmsg": message, "code": code[0], "codeName": code[1]}


def op_reply(response_to: int, document: Document, request_id: int = 0) -> bytes:
    body = struct.pack("<iqii", 0, 0, 0, 1) + encode_document(document)
    return _message(OP_REPLY, request_id, response_to, body)


def op_msg(response_to: int, document: Document, request_id: int = 0) -> bytes:
    body = _U32.pack(0) + b"\0" + encode_document(document)
    return _message(OP_MSG, request_id, response_to, body)


def reply_to(request: Request, document: Document, request_id: int = 0) -> bytes:
    """The answer in the form the request expects (OP_REPLY to OP_QUERY, else OP_MSG)."""
    build = op_reply if request.header.op_code == OP_QUERY else op_msg
    return build(request.header.request_id, document, request_id)


def _message(op_code: int, request_id: int, response_to: int, body: bytes) -> bytes:
    return _HEADER.pack(HEADER_SIZE + len(body), request_id, response_to, op_code) + body


def parse_reply(message: bytes) -> tuple[Header, Document]:
    """The header and first document of an OP_REPLY or OP_MSG (the client's side)."""
    header = parse_header(message)
    if header.length != len(message):
        raise ProtocolError(f"message says {header.length} bytes, has {len(message)}")
    body = message[HEADER_SIZE:]
    if header.op_code == OP_REPLY:
        return header, decode_document(_document_at(body, 20))
    if header.op_code == OP_MSG:
        return header, decode_document(_msg_body(body)[1])
    raise ProtocolError(f"unexpected opCode {header.op_code} in a reply")


# -- BSON: the element types of handshakes and command errors ---------------------------

def _cstring(name: str) -> bytes:
    raw = name.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"BSON key {name!r} contains NUL")
    return raw + b"\0"


def _element(name: str, value: Any, depth: int) -> bytes:
    key = _cstring(name)
    if isinstance(value, bool):
        return b"\x08" + key + (b"\x01" if value else b"\x00")
    if isinstance(value, float):
        return b"\x01" + key + _F64.pack(value)
    if isinstance(value, int):
        if -(1 << 31) <= value < 1 << 31:
            return b"\x10" + key + _I32.pack(value)
        return b"\x12" + key + _I64.pack(value)
    if isinstance(value, str):
        raw = value.encode("utf-8") + b"\0"
        return b"\x02" + key + _I32.pack(len(raw)) + raw
    if value is None:
        return b"\x0a" + key
    if isinstance(value, dict):
        return b"\x03" + key + _encode(value, depth + 1)
    if isinstance(value, list):
        return b"\x04" + key + _encode({str(i): v for i, v in enumerate(value)}, depth + 1)
    raise TypeError(f"no BSON encoding here for {type(value).__name__}")


def _encode(document: Document, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise ValueError("BSON document nested too deep")
    elements = b"".join(_element(k, v, depth) for k, v in document.items())
    return _I32.pack(len(elements) + 5) + elements + b"\0"


def encode_document(document: Document) -> bytes:
    return _encode(document, 0)


def first_key(document: bytes) -> str:
    """The name of a BSON document's first element ("" for an empty document)."""
    if len(document) < 5:
        raise ProtocolError("BSON document truncated")
    end = document.find(b"\0", 5)
    if document[4] == 0:
        return ""
    if end < 0:
        raise ProtocolError("BSON key without its NUL")
    return document[5:end].decode("utf-8", "replace")


def decode_document(data: bytes) -> Document:
    """A whole BSON document of the element types encode_document writes."""
    document, end = _decode(data, 0, 0)
    if end != len(data):
        raise ProtocolError("bytes after the BSON document")
    return document


def _decode(data: bytes, pos: int, depth: int) -> tuple[Document, int]:
    if depth > MAX_DEPTH:
        raise ProtocolError("BSON document nested too deep")
    raw = _document_at(data, pos)
    if raw[-1] != 0:
        raise ProtocolError("BSON document does not end with NUL")
    out: Document = {}
    at, end = 4, len(raw) - 1
    while at < end:
        kind = raw[at]
        name_end = raw.find(b"\0", at + 1, end)
        if name_end < 0:
            raise ProtocolError("BSON key without its NUL")
        name = raw[at + 1:name_end].decode("utf-8", "replace")
        out[name], at = _value(raw, kind, name_end + 1, end, depth)
    if at != end:
        raise ProtocolError("BSON element runs past its document")
    return out, pos + len(raw)


def _fixed(raw: bytes, fmt: struct.Struct, at: int, end: int) -> tuple[Any, int]:
    if at + fmt.size > end:
        raise ProtocolError("BSON value truncated")
    return fmt.unpack_from(raw, at)[0], at + fmt.size


def _value(raw: bytes, kind: int, at: int, end: int, depth: int) -> tuple[Any, int]:
    if kind == 0x01:
        return _fixed(raw, _F64, at, end)
    if kind == 0x10:
        return _fixed(raw, _I32, at, end)
    if kind == 0x12:
        return _fixed(raw, _I64, at, end)
    if kind == 0x08:
        if at >= end or raw[at] > 1:
            raise ProtocolError("BSON boolean out of range")
        return raw[at] == 1, at + 1
    if kind == 0x0A:
        return None, at
    if kind == 0x02:
        size, at = _fixed(raw, _I32, at, end)
        if size < 1 or at + size > end or raw[at + size - 1] != 0:
            raise ProtocolError("BSON string length out of bounds")
        return raw[at:at + size - 1].decode("utf-8", "replace"), at + size
    if kind in (0x03, 0x04):
        sub, after = _decode(raw[:end], at, depth + 1)
        return (list(sub.values()) if kind == 0x04 else sub), after
    raise ProtocolError(f"BSON element type {kind:#x} is not decoded here")
