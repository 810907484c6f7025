"""COM_STMT_EXECUTE's parameters (the binary protocol), read for the query audit: the
block after the command's 10-byte head — NULL bitmap ((n + 7) / 8 bytes), the
new-params-bound flag, the parameter types (2 bytes each) when it is 1, then the values.
When the flag is 0 the types are those of the statement's earlier execute (the caller
remembers them). Bounded: what was recorded is read, never past it; a value that runs
past it ends the list (`cut`)."""

from __future__ import annotations

import struct

_FIXED = {1: 1, 2: 2, 13: 2, 3: 4, 9: 4, 8: 8, 4: 4, 5: 8, 6: 0}  # tiny..double, NULL
_TEMPORAL = {7, 10, 11, 12}  # timestamp, date, time, datetime: a length byte first
_INT = {1: "b", 2: "h", 13: "h", 3: "i", 9: "i", 8: "q"}


def _lenenc(b: bytes, at: int) -> tuple[int, int] | None:
    if at >= len(b):
        return None
    first = b[at]
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    if first == 0xFB or first == 0xFF:
        return None
    if at + 1 + width > len(b):
        return None
    if width == 0:
        return first, at + 1
    return int.from_bytes(b[at + 1:at + 1 + width], "little"), at + 1 + width


def _temporal(kind: int, raw: bytes) -> str:
    if kind == 11:  # time: neg, days, h, m, s[, micro]
        if len(raw) < 8:
            return "00:00:00"
        neg, days, h, m, s = raw[0], int.from_bytes(raw[1:5], "little"), raw[5], raw[6], raw[7]
        micro = f".{int.from_bytes(raw[8:12], 'little'):06d}" if len(raw) >= 12 else ""
        return f"{'-' if neg else ''}{days * 24 + h:02d}:{m:02d}:{s:02d}{micro}"
    y = int.from_bytes(raw[0:2], "little") if len(raw) >= 4 else 0
    mo, d = (raw[2], raw[3]) if len(raw) >= 4 else (0, 0)
    out = f"{y:04d}-{mo:02d}-{d:02d}"
    if len(raw) >= 7:
        out += f" {raw[4]:02d}:{raw[5]:02d}:{raw[6]:02d}"
    if len(raw) >= 11:
        out += f".{int.from_bytes(raw[7:11], 'little'):06d}"
    return out


def _text(kind: int, unsigned: bool, raw: bytes) -> bytes:
    """A value as its text (what a text-protocol client would have written)."""
    if kind in _INT:
        fmt = "<" + (_INT[kind].upper() if unsigned else _INT[kind])
        return str(struct.unpack(fmt, raw)[0]).encode()
    if kind == 4:
        return repr(struct.unpack("<f", raw)[0]).encode()
    if kind == 5:
        return repr(struct.unpack("<d", raw)[0]).encode()
    if kind in _TEMPORAL:
        return _temporal(kind, raw).encode()
    return raw


def execute_params(block: bytes, count: int, types: bytes | None
                   ) -> tuple[list[bytes | None], bytes | None, bool]:
    """(values as text, None for NULL; the types in force (to remember); cut) of a
    parameter block for `count` parameters. No types (none bound and none remembered):
    ([], None, True)."""
    if count == 0:
        return [], types, False
    nb = (count + 7) // 8
    if len(block) < nb + 1:
        return [], types, True
    nulls, at = block[:nb], nb + 1
    if block[nb] == 1:
        if len(block) < at + 2 * count:
            return [], None, True
        types, at = bytes(block[at:at + 2 * count]), at + 2 * count
    if types is None or len(types) != 2 * count:
        return [], None, True
    out: list[bytes | None] = []
    for i in range(count):
        if nulls[i // 8] >> (i % 8) & 1:
            out.append(None)
            continue
        kind, unsigned = types[2 * i], bool(types[2 * i + 1] & 0x80)
        if kind in _FIXED:
            size = _FIXED[kind]
        elif kind in _TEMPORAL:
            if at >= len(block):
                return out, types, True
            size, at = block[at], at + 1
        else:
            got = _lenenc(block, at)
            if got is None:
                return out, types, True
            size, at = got
        if at + size > len(block):
            return out, types, True
        out.append(None if kind == 6 else _text(kind, unsigned, bytes(block[at:at + size])))
        at += size
    return out, types, False
