"""Pure-Python twin of csrc/mwi_inspect_mongo.c: the mongodb part of the inspection
framer (inspect_py.Framer), step for step.

A message's first min(length, MAX_HELD) bytes (its window) are buffered and judged once:
PASS (the window goes on, the rest of the message streams) or HOLD (the whole message is
the window). A longer message that does not pass there (pymongo writes `$db` last) is
buffered whole (up to max_message) and judged again whole: PASS or HOLD. The judge walks the
OP_MSG sections and the body document's top-level elements by BSON's size rules, every
size checked to stay inside its document and the message.
"""

from __future__ import annotations

OP_MSG = 2013
HDR = 16
MAX_MESSAGE = 48_000_000  # the server's default maxMessageSizeBytes
# commands Python decides (ASCII case-insensitive, a superset of what the server matches):
# authentication (the proxy authenticates the connection itself), the handshake (Python
# rewrites it), commands that may write to another database (aggregate $out/$merge,
# mapReduce out)
HELD_COMMANDS = frozenset((b"authenticate", b"saslstart", b"saslcontinue", b"logout",
                           b"getnonce", b"copydbsaslstart", b"copydbgetnonce", b"hello",
                           b"ismaster", b"aggregate", b"mapreduce"))
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")

_UNREADABLE, _MALFORMED = -2, -1
_B_HOLD, _B_OK, _B_PARTIAL = 0, 1, 2
_FIXED = {0x06: 0, 0x0A: 0, 0x7F: 0, 0xFF: 0, 0x08: 1, 0x10: 4, 0x01: 8, 0x09: 8,
          0x11: 8, 0x12: 8, 0x07: 12, 0x13: 16}
# length-prefixed values: type -> (least length, bytes beyond it)
_PREFIXED = {0x02: (1, 4), 0x0D: (1, 4), 0x0E: (1, 4), 0x03: (5, 0), 0x04: (5, 0),
             0x0F: (14, 0), 0x05: (0, 5), 0x0C: (1, 16)}


def le32s(b: bytes | bytearray | memoryview, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little", signed=True)


def _find_nul(b: bytes, start: int, end: int) -> int:
    return b.find(0, start, end) if start < end else -1


def value_size(t: int, b: bytes, v: int, w: int, room: int) -> int:
    """The size of a BSON value of type t at b[v:] (w bytes known; it must end within
    room bytes), or _MALFORMED / _UNREADABLE."""
    if t in _FIXED:
        n = _FIXED[t]
    elif t in _PREFIXED:
        least, extra = _PREFIXED[t]
        if room < 4:
            return _MALFORMED
        if v + 4 > w:
            return _UNREADABLE
        n = le32s(b, v)
        if n < least:
            return _MALFORMED
        n += extra
    elif t == 0x0B:  # regex: two cstrings
        end = min(v + room, w)
        a = _find_nul(b, v, end)
        if a >= 0:
            a = _find_nul(b, a + 1, end)
        if a < 0:
            return _MALFORMED if end == v + room else _UNREADABLE
        n = a + 1 - v
    else:
        return _MALFORMED
    return _MALFORMED if n > room else n


def walk_body(allowed: frozenset[bytes], b: bytes, pos: int, w: int,
              msg: int) -> tuple[int, int]:
    """(verdict, the document's size) for the body document at b[pos:]."""
    if pos + 4 > w:
        return (_B_HOLD if w == msg else _B_PARTIAL), 0
    size = le32s(b, pos)
    if size < 5 or size > msg - pos:
        return _B_HOLD, 0
    last = pos + size - 1
    p = pos + 4
    first = True
    db_seen = db_ok = False
    while p < w:
        if b[p] == 0:
            if p != last:
                return _B_HOLD, size
            return (_B_OK if db_ok else _B_HOLD), size
        if p >= last:
            return _B_HOLD, size
        end = min(last, w)
        q = _find_nul(b, p + 1, end)
        if q < 0:
            if end == last:
                return _B_HOLD, size
            break
        v = q + 1
        name = b[p + 1:q]
        if first and name.translate(_LOWER) in HELD_COMMANDS:
            return _B_HOLD, size
        first = False
        n = value_size(b[p], b, v, w, last - v)
        if n == _MALFORMED:
            return _B_HOLD, size
        if n == _UNREADABLE:
            break
        if name == b"$db":
            if db_seen or b[p] != 0x02:
                return _B_HOLD, size
            db_seen = True
            if v + n > w:
                break
            db_ok = b[v + n - 1] == 0 and b[v + 4:v + n - 1] in allowed
            if not db_ok:
                return _B_HOLD, size
        p = v + n
    return (_B_PARTIAL if db_ok else _B_HOLD), size


def judge(allowed: frozenset[bytes], b: bytes, msg: int) -> bool:
    """Whether a message of msg bytes whose window is b passes."""
    w = len(b)
    if le32s(b, 12) != OP_MSG or w < HDR + 4:
        return False
    if le32s(b, HDR) & 0xFFFD:  # a checksum, or unknown required bits
        return False
    pos, body, found = HDR + 4, _B_HOLD, False
    while pos < msg:
        if pos >= w:
            break
        kind = b[pos]
        pos += 1
        if kind == 1:
            if pos + 4 > w:
                if w == msg:
                    return False
                break
            size = le32s(b, pos)
            if size < 5 or size > msg - pos:
                return False
        elif kind == 0 and not found:
            found = True
            body, size = walk_body(allowed, b, pos, w, msg)
            if body != _B_OK:
                break
        else:
            return False
        pos += size
    return body != _B_HOLD
