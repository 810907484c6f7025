"""What the MongoDB engine reads of each client message: its database (`$db`), its
command name, whether it expects a reply — and the handshake rewrite.

Bounded per message: the caller has already bounded the length (16 bytes up to the
server's maxMessageSizeBytes); here at most MAX_SECTIONS OP_MSG sections and
MAX_FIELDS top-level fields of a command document are walked, each field skipped by its
size (nested documents are never entered), so a message costs O(MAX_FIELDS) steps
whatever its size. What does not fit these bounds is a ProtocolError: real commands
have a handful of top-level fields (bulk data travels in nested arrays or document
sequences, skipped whole).

- OP_MSG: `$db` is a field of the body section (kind 0); drivers always send it.
- OP_QUERY (legacy, the drivers' first handshake): the database is the prefix of
  fullCollectionName (`admin.$cmd`); a wrapped query (`{$query: {...}}`) names its
  command inside.
- OP_COMPRESSED: never agreed (`strip_handshake` removes `compression` from the client's
  hello), so one is refused; its originalOpcode says which reply format the client reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mwiproxy.wire.mongodb import (
    HEADER_SIZE,
    MSG_CHECKSUM_PRESENT,
    MSG_MORE_TO_COME,
    OP_COMPRESSED,
    OP_MSG,
    OP_QUERY,
    OP_REPLY,
    Header,
    ProtocolError,
    parse_header,
)

MAX_FIELDS = 256
MAX_SECTIONS = 64
MAX_NAME = 1024  # a field name (or a namespace) longer than this is not a command's

# commands the engine refuses: it authenticates the connection itself (lower case; the
# server compares these names exactly, isMaster alone has two spellings)
AUTH_COMMANDS = frozenset({"authenticate", "saslstart", "saslcontinue", "logout",
                           "getnonce", "copydbsaslstart", "copydbgetnonce"})
HANDSHAKE_COMMANDS = frozenset({"hello", "ismaster"})
# removed from a client's handshake: compression is not offered (each message is
# checked as sent), and authentication is the engine's own
HANDSHAKE_STRIPPED = (b"compression", b"speculativeAuthenticate", b"saslSupportedMechs")

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<iiii")
# BSON value sizes: fixed ones, and the types whose value starts with its int32 size
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
          0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
_SIZED_WHOLE = (0x03, 0x04, 0x0F)  # document, array, code with scope: size counts itself
_STRINGS = (0x02, 0x0D, 0x0E)  # string, code, symbol: int32 size of what follows


@dataclass(frozen=True)
class ClientMessage:
    header: Header
    op_code: int  # the message's own, or OP_COMPRESSED's originalOpcode
    database: str  # "" when the message names none (refused)
    command: str  # the command document's first field ("" if none)
    expects_reply: bool
    compressed: bool = False
    # other databases the command writes to: an aggregation's `$out`/`$merge` or a
    # mapReduce's `out` naming a `db`
    writes_to: tuple[str, ...] = ()

    @property
    def is_auth(self) -> bool:
        return self.command.lower() in AUTH_COMMANDS

    @property
    def is_handshake(self) -> bool:
        return self.command.lower() in HANDSHAKE_COMMANDS


@dataclass(frozen=True)
class Field:
    name: bytes
    kind: int
    start: int  # the field's type byte
    value: int  # where its value starts
    end: int  # just past its value


def fields(doc: bytes, pos: int = 0, limit: int = MAX_FIELDS) -> list[Field]:
    """The top-level fields of the BSON document at `pos` (its size checked against the
    data), at most `limit` of them (more: ProtocolError)."""
    if len(doc) < pos + 5:
        raise ProtocolError("BSON document truncated")
    (size,) = _I32.unpack_from(doc, pos)
    end = pos + size - 1
    if size < 5 or pos + size > len(doc) or doc[end] != 0:
        raise ProtocolError("BSON document length out of bounds")
    out: list[Field] = []
    at = pos + 4
    while at < end:
        if len(out) >= limit:
            raise ProtocolError(f"a command document of more than {limit} fields")
        kind = doc[at]
        name_end = doc.find(b"\0", at + 1, min(end, at + 2 + MAX_NAME))
        if name_end < 0:
            raise ProtocolError("BSON field name without its NUL (or too long)")
        value = name_end + 1
        after = _skip(doc, kind, value, end)
        out.append(Field(doc[at + 1:name_end], kind, at, value, after))
        at = after
    if at != end:
        raise ProtocolError("BSON field runs past its document")
    return out


def _skip(doc: bytes, kind: int, at: int, end: int) -> int:
    """Just past the value of type `kind` at `at` (within `end`)."""
    if kind in _FIXED:
        after = at + _FIXED[kind]
    elif kind in _STRINGS or kind in _SIZED_WHOLE or kind == 0x05:
        if at + 4 > end:
            raise ProtocolError("BSON value truncated")
        (size,) = _I32.unpack_from(doc, at)
        if size < (5 if kind in _SIZED_WHOLE else 1 if kind in _STRINGS else 0):
            raise ProtocolError("BSON value of a bad size")
        # a document's size counts itself; a string's and a binary's (+ subtype) do not
        after = at + (size if kind in _SIZED_WHOLE else 4 + size + (kind == 0x05))
    elif kind == 0x0C:  # DBPointer: string then ObjectId
        after = _skip(doc, 0x02, at, end) + 12
    elif kind == 0x0B:  # regex: two C strings
        first = doc.find(b"\0", at, end)
        second = doc.find(b"\0", first + 1, end) if first >= 0 else -1
        if second < 0:
            raise ProtocolError("BSON regex truncated")
        after = second + 1
    else:
        raise ProtocolError(f"BSON field type {kind:#x} unknown")
    if after > end:
        raise ProtocolError("BSON value runs past its document")
    return after


def _string(doc: bytes, f: Field) -> str:
    if f.kind != 0x02:
        return ""
    return doc[f.value + 4:f.end - 1].decode("utf-8", "replace")


def inspect(message: bytes, max_length: int) -> ClientMessage:
    """A whole client message (its length already read from its header)."""
    header = parse_header(message, max_length)
    if header.length != len(message):
        raise ProtocolError(f"message says {header.length} bytes, has {len(message)}")
    body = message[HEADER_SIZE:]
    if header.op_code == OP_MSG:
        return _op_msg(header, OP_MSG, body)
    if header.op_code == OP_QUERY:
        return _op_query(header, body)
    if header.op_code == OP_COMPRESSED:
        if len(body) < 9:
            raise ProtocolError("OP_COMPRESSED truncated")
        (original,) = _I32.unpack_from(body)
        flags = 0
        if original == OP_MSG and len(body) >= 13 and body[8] == 0:  # noop compressor
            flags = _U32.unpack_from(body, 9)[0]
        return ClientMessage(header, original, "", "", not flags & MSG_MORE_TO_COME,
                             compressed=True)
    raise ProtocolError(f"opCode {header.op_code} is not served (OP_MSG, or OP_QUERY for "
                        "a handshake)")


def _body_section(body: bytes) -> tuple[int, int]:
    """flagBits and where an OP_MSG's kind-0 section's document starts."""
    if len(body) < 5:
        raise ProtocolError("OP_MSG truncated")
    (flags,) = _U32.unpack_from(body)
    end = len(body) - (4 if flags & MSG_CHECKSUM_PRESENT else 0)
    pos, found = 4, -1
    for _ in range(MAX_SECTIONS):
        if pos >= end:
            break
        kind = body[pos]
        if pos + 5 > end:
            raise ProtocolError("OP_MSG section truncated")
        (size,) = _I32.unpack_from(body, pos + 1)
        if kind == 0:
            if found >= 0:
                raise ProtocolError("OP_MSG with two body sections")
            found = pos + 1
        elif kind != 1 or size < 5:
            raise ProtocolError(f"OP_MSG section of kind {kind}")
        if size < 5 or pos + 1 + size > end:
            raise ProtocolError("OP_MSG section length out of bounds")
        pos += 1 + size
    else:
        if pos < end:
            raise ProtocolError(f"OP_MSG of more than {MAX_SECTIONS} sections")
    if pos != end:
        raise ProtocolError("OP_MSG sections run past the message")
    if found < 0:
        raise ProtocolError("OP_MSG without a body section")
    return flags, found


def _op_msg(header: Header, op_code: int, body: bytes) -> ClientMessage:
    flags, at = _body_section(body)
    fs = fields(body, at)
    dbs = [f for f in fs if f.name == b"$db"]
    if len(dbs) > 1:  # which one a server reads is not ours to guess
        raise ProtocolError("an OP_MSG with more than one $db")
    command = fs[0].name.decode("utf-8", "replace") if fs else ""
    return ClientMessage(header, op_code, _string(body, dbs[0]) if dbs else "", command,
                         not flags & MSG_MORE_TO_COME,
                         writes_to=_writes_to(body, command, fs))


def _field(data: bytes, fs: list[Field], name: bytes, kind: int) -> Field | None:
    return next((f for f in fs if f.name == name and f.kind == kind), None)


def _db_of(data: bytes, target: Field | None) -> list[str]:
    """The `db` named by an output target `{db: …, coll: …}` (none for a plain name)."""
    if target is None:
        return []
    db = _field(data, fields(data, target.value), b"db", 0x02)
    return [_string(data, db)] if db else []


def _writes_to(data: bytes, command: str, fs: list[Field]) -> tuple[str, ...]:
    """Databases other than `$db` an aggregate (`$out`, `$merge`) or a mapReduce (`out`)
    writes to; each stage is a bounded walk (MAX_FIELDS stages at most)."""
    out: list[str] = []
    name = command.lower()
    if name == "aggregate" and (pipeline := _field(data, fs, b"pipeline", 0x04)):
        for stage in fields(data, pipeline.value):
            if stage.kind != 0x03:
                continue
            ops = fields(data, stage.value, 2)  # a stage is one operator (the server says)
            if ops and ops[0].name == b"$out":
                out += _db_of(data, ops[0] if ops[0].kind == 0x03 else None)
            elif ops and ops[0].name == b"$merge" and ops[0].kind == 0x03:
                into = _field(data, fields(data, ops[0].value), b"into", 0x03)
                out += _db_of(data, into)
    elif name == "mapreduce":
        out += _db_of(data, _field(data, fs, b"out", 0x03))
    return tuple(out)


def _query_parts(body: bytes) -> tuple[str, int]:
    """An OP_QUERY's database (the namespace's prefix) and where its query starts."""
    end = body.find(b"\0", 4, 4 + MAX_NAME + 1)
    if end < 0 or len(body) < end + 9:
        raise ProtocolError("OP_QUERY truncated (or its namespace too long)")
    namespace = body[4:end].decode("utf-8", "replace")
    db, dot, _ = namespace.partition(".")
    return (db if dot else ""), end + 9


def _op_query(header: Header, body: bytes) -> ClientMessage:
    db, at = _query_parts(body)
    fs = fields(body, at)
    command = fs[0].name.decode("utf-8", "replace") if fs else ""
    if command in ("$query", "query") and fs[0].kind == 0x03:  # a wrapped command
        inner = fields(body, fs[0].value)
        command = inner[0].name.decode("utf-8", "replace") if inner else ""
    if _query_end(body, at) != len(body):  # a returnFieldsSelector may follow
        fields(body, _query_end(body, at))
    return ClientMessage(header, OP_QUERY, db, command, True)


def _query_end(body: bytes, at: int) -> int:
    return at + _I32.unpack_from(body, at)[0]


# -- the handshake rewrite ------------------------------------------------------------

def strip_handshake(message: bytes, msg: ClientMessage) -> bytes:
    """The client's hello/isMaster without HANDSHAKE_STRIPPED fields (and, for OP_MSG,
    without a checksum: it would no longer match). Other messages are returned as is."""
    if not msg.is_handshake or msg.compressed:
        return message
    body = message[HEADER_SIZE:]
    wrapper = None
    if msg.op_code == OP_MSG:
        flags, at = _body_section(body)
        if flags & MSG_CHECKSUM_PRESENT:
            body = _U32.pack(flags & ~MSG_CHECKSUM_PRESENT) + body[4:-4]
    else:
        _, at = _query_parts(body)
        first = fields(body, at)[0]
        if first.name in (b"$query", b"query") and first.kind == 0x03:
            wrapper, at = at, first.value  # the command is the wrapped document
    new_body = _without(body, at, wrapper, HANDSHAKE_STRIPPED)
    if len(new_body) == len(message) - HEADER_SIZE:
        return message
    h = msg.header
    return _HEADER.pack(HEADER_SIZE + len(new_body), h.request_id, h.response_to,
                        h.op_code) + new_body


def _without(data: bytes, at: int, wrapper: int | None, names: tuple[bytes, ...]) -> bytes:
    """`data` without the fields named `names` of the document at `at`; its size, and
    that of the `wrapper` document holding it (an OP_QUERY's `{$query: ...}`), shrink."""
    drop = [f for f in fields(data, at) if f.name in names]
    if not drop:
        return data
    removed = sum(f.end - f.start for f in drop)
    out = bytearray(data)
    for f in reversed(drop):
        del out[f.start:f.end]
    for doc in (at, wrapper):
        if doc is not None:
            out[doc:doc + 4] = _I32.pack(_I32.unpack_from(out, doc)[0] - removed)
    return bytes(out)


# -- the server's answers to the engine's own commands --------------------------------

Scalar = int | float | str | bool | None
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


def reply_scalars(message: bytes, max_length: int) -> tuple[Header, dict[str, Scalar]]:
    """The header and the top-level scalar fields (numbers, booleans, strings) of the
    document of an OP_MSG or OP_REPLY answer; other fields are skipped unread."""
    header = parse_header(message, max_length)
    if header.length != len(message):
        raise ProtocolError(f"message says {header.length} bytes, has {len(message)}")
    body = message[HEADER_SIZE:]
    if header.op_code == OP_MSG:
        at = _body_section(body)[1]
    elif header.op_code == OP_REPLY:
        at = 20  # responseFlags, cursorID, startingFrom, numberReturned
    else:
        raise ProtocolError(f"unexpected opCode {header.op_code} in an answer")
    out: dict[str, Scalar] = {}
    for f in fields(body, at):
        name = f.name.decode("utf-8", "replace")
        if f.kind == 0x10:
            out[name] = _I32.unpack_from(body, f.value)[0]
        elif f.kind == 0x12:
            out[name] = _I64.unpack_from(body, f.value)[0]
        elif f.kind == 0x01:
            out[name] = _F64.unpack_from(body, f.value)[0]
        elif f.kind == 0x08:
            out[name] = body[f.value] == 1
        elif f.kind == 0x02:
            out[name] = _string(body, f)
    return header, out
