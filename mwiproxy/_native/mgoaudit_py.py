"""The MongoDB query-audit tap, pure Python: the twin of csrc/mwi_mgoaudit.c, record for
record and byte for byte (see csrc/mwi_mgoaudit.h; tests/unit/native/
test_mgoaudit_differential.py compares the two). Records: pgaudit_py.decode reads them.
"""

from __future__ import annotations

import struct

from .pgaudit_py import (
    BAD_LENGTH,
    ST_ERROR,
    ST_OK,
    ST_UNFINISHED,
    TRUNCATED,
    UNTRACKED,
)

DOC_CAP = 16384
REQ_WIN = DOC_CAP + 512
REPLY_WIN = 8192
MAX_LEN = 48_000_000
NAME_CAP = 128
ERR_CAP = 256
FIFO = 256
UNPARSED = 8
SECRET = 16
ROWS = 32
ST_UNANSWERED = 6
OP_REPLY, OP_QUERY, OP_GET_MORE, OP_COMPRESSED, OP_MSG = 1, 2004, 2005, 2012, 2013
_BAD, _PARTIAL = -1, -2
_SECRET = {b"saslstart", b"saslcontinue", b"authenticate", b"getnonce", b"copydbsaslstart",
           b"copydbgetnonce", b"createuser", b"updateuser"}
_FIXED = {0x06: 0, 0x0A: 0, 0x7F: 0, 0xFF: 0, 0x08: 1, 0x10: 4, 0x01: 8, 0x09: 8, 0x11: 8,
          0x12: 8, 0x07: 12, 0x13: 16}
_PREFIXED = {0x02: (1, 4), 0x0D: (1, 4), 0x0E: (1, 4), 0x03: (5, 0), 0x04: (5, 0),
             0x0F: (14, 0), 0x05: (0, 5), 0x0C: (1, 16)}
_HEAD = struct.Struct("<BBHIIIQQQ")
_FIELD = struct.Struct("<II")
_F64 = struct.Struct("<d")


def _le32(b: bytes | bytearray, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little")


def _s32(b: bytes | bytearray, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little", signed=True)


def value_size(ty: int, b: bytes | bytearray, v: int, w: int, room: int) -> int:
    """The size of a value of type ty at b[v:] ending within room bytes (w kept)."""
    if ty in _FIXED:
        n = _FIXED[ty]
    elif ty == 0x0B:
        lim = min(v + room, w)
        q = b.find(b"\0", v, lim) if v < lim else -1
        if q < 0:
            return _BAD if lim == v + room else _PARTIAL
        q = b.find(b"\0", q + 1, lim) if q + 1 < lim else -1
        if q < 0:
            return _BAD if lim == v + room else _PARTIAL
        return q + 1 - v
    elif ty in _PREFIXED:
        least, add = _PREFIXED[ty]
        if room < 4:
            return _BAD
        if v + 4 > w:
            return _PARTIAL
        n = _s32(b, v)
        if n < least:
            return _BAD
        n += add
    else:
        return _BAD
    return _BAD if n > room else n


class Walk:
    """A document's top-level elements, bounded by what is kept (csrc's walk)."""

    def __init__(self, b: bytes | bytearray, w: int) -> None:
        self.b, self.w = b, w
        self.at = self.end = 0
        self.ty = self.name = self.name_len = self.v = self.size = 0

    def open(self, ds: int, limit: int) -> int:
        if ds + 4 > limit:
            return _BAD
        if ds + 4 > self.w:
            return _PARTIAL
        n = _s32(self.b, ds)
        if n < 5 or n > limit - ds:
            return _BAD
        self.at, self.end, self.size = ds + 4, ds + n - 1, 0
        return 1

    def next(self) -> int:
        lim = min(self.end, self.w)
        if self.size == _PARTIAL:
            return _PARTIAL
        if self.at == self.end:
            return 0
        if self.at >= self.w:
            return _PARTIAL
        self.ty = self.b[self.at]
        q = self.b.find(b"\0", self.at + 1, lim) if self.at + 1 < lim else -1
        if q < 0:
            return _BAD if lim == self.end else _PARTIAL
        self.name, self.name_len = self.at + 1, q - self.at - 1
        self.v = q + 1
        self.size = value_size(self.ty, self.b, self.v, self.w, self.end - self.v)
        if self.size == _BAD:
            return _BAD
        if self.size >= 0:
            self.at = self.v + self.size
        return 1

    def named(self) -> bytes:
        return bytes(self.b[self.name:self.name + self.name_len])

    def whole(self) -> bool:
        return self.size >= 0 and self.v + self.size <= self.w

    def int_value(self) -> int | None:
        if not self.whole():
            return None
        if self.ty == 0x10:
            return _s32(self.b, self.v) & 0xFFFFFFFFFFFFFFFF
        if self.ty == 0x12:
            return int.from_bytes(self.b[self.v:self.v + 8], "little")
        return None

    def sub(self) -> tuple[Walk, int]:
        s = Walk(self.b, self.w)
        r = s.open(self.v, self.v + self.size if self.size >= 0 else self.end)
        return s, r

    def string(self, cap: int) -> tuple[int, int, int]:
        """(at, kept, full) of a string value's text."""
        if self.ty != 0x02 or self.size < 5:
            return (0, 0, 0)
        at, full = self.v + 4, self.size - 5
        return (at, min(full, cap, max(self.w - at, 0)), full)


_Span = tuple[int, int, int]  # at, kept, full
_NONE: _Span = (0, 0, 0)


class _Side:
    def __init__(self) -> None:
        self.hdr = bytearray()
        self.msg_len = 0
        self.body = bytearray()
        self.left = 0
        self.offset = 0


class Tap:
    """feed(side, data, now_ns) -> len(data); end(now_ns); `records` (bytes each)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.side = [_Side(), _Side()]
        self.dead = [False, False]
        self.seq = 0
        self.fifo: list[tuple[int, int, int]] = []  # (t, seq, request id)
        self.dropped = 0

    def _emit(self, kind: str, flags: int, fields: list[tuple[bytes, int]], seq: int,
              aux: int, n1: int, n2: int, n3: int, code: int = 0) -> None:
        body = b""
        for data, full in fields:
            body += _FIELD.pack(full, len(data)) + data
            if full > len(data):
                flags |= TRUNCATED
        self.records.append(_HEAD.pack(ord(kind), flags, len(fields), seq, aux, code,
                                       n1, n2, n3) + body)

    # -- requests ---------------------------------------------------------------------

    def _request(self, now: int) -> None:
        s = self.side[0]
        b, w, length = s.body, len(s.body), s.msg_len - 16
        op, rid = _le32(s.hdr, 12), _le32(s.hdr, 4)
        db = cmd = coll = doc = _NONE
        lit: bytes | None = None
        n2 = ds = limit = 0
        have_doc = untracked = unparsed = secret = False
        is_cmd = True
        flags = 0
        if op == OP_MSG:
            if length < 4:
                unparsed = True
            else:
                mflags = _le32(b, 0)
                untracked = bool(mflags & 2)
                limit = length - (4 if mflags & 1 and length >= 8 else 0)
                pos = 4
                while True:
                    if pos >= limit or pos >= w:
                        unparsed = True
                        break
                    if b[pos] == 0:
                        ds, have_doc = pos + 1, True
                        break
                    if b[pos] != 1 or pos + 5 > w:
                        unparsed = True
                        break
                    sz = _s32(b, pos + 1)
                    if sz < 4 or sz > limit - pos - 1:
                        unparsed = True
                        break
                    pos += 1 + sz
        elif op == OP_QUERY:
            lim = min(w, length)
            nul = b.find(b"\0", 4, lim) if lim > 4 else -1
            if nul < 0:
                unparsed = True
            else:
                dot = b.find(b".", 4, nul)
                d = dot if dot >= 0 else nul
                db = (4, d - 4, d - 4)
                if dot >= 0:
                    coll = (d + 1, nul - d - 1, nul - d - 1)
                is_cmd = coll[1] == 4 and b[coll[0]:coll[0] + 4] == b"$cmd"
                if not is_cmd:
                    lit = b"find"
                else:
                    coll = _NONE
                ds, limit, have_doc = nul + 9, length, True
        elif op == OP_COMPRESSED:
            if length < 9:
                unparsed = True
            else:
                n2 = b[8] | _le32(b, 0) << 8
                lit = b"<compressed>"
        elif op != OP_GET_MORE:
            untracked = True
        if have_doc:
            k = Walk(b, w)
            r = k.open(ds, limit)
            if r != 1:
                unparsed = True
            else:
                first = True
                while (r := k.next()) == 1:
                    if first and is_cmd:
                        cmd = (k.name, k.name_len, k.name_len)
                        coll = k.string(NAME_CAP)
                    if op == OP_MSG and k.named() == b"$db" and k.ty == 0x02:
                        db = k.string(NAME_CAP)
                    if k.named().lower() == b"speculativeauthenticate":
                        secret = True
                    first = False
                if r == _BAD:
                    unparsed = True
                else:
                    full = _le32(b, ds)
                    doc = (ds, min(full, DOC_CAP, w - ds), full)
        if unparsed:
            db = cmd = coll = doc = _NONE
            lit = None
            flags |= UNPARSED
        if lit is None and cmd[2] and bytes(b[cmd[0]:cmd[0] + cmd[2]]).lower() in _SECRET:
            secret = True
        if secret:
            doc = _NONE
            flags |= SECRET

        def cut(sp: _Span, cap: int) -> tuple[bytes, int]:
            return bytes(b[sp[0]:sp[0] + min(sp[1], cap)]), sp[2]

        self.seq = (self.seq + 1) & 0xFFFFFFFF
        if not untracked and len(self.fifo) == FIFO:
            untracked = True
        if untracked:
            flags |= UNTRACKED
        else:
            self.fifo.append((now, self.seq, rid))
        fields = [cut(db, NAME_CAP), (lit, len(lit)) if lit is not None else cut(cmd, NAME_CAP),
                  cut(coll, NAME_CAP), cut(doc, DOC_CAP)]
        self._emit("Q", flags, fields, self.seq, op, s.msg_len, n2, rid)

    # -- replies ----------------------------------------------------------------------

    def _read_reply(self) -> tuple[int, int, int, int, _Span]:
        """(status, code, flags, rows, errmsg) of side 1's message."""
        s = self.side[1]
        b, w, length = s.body, len(s.body), s.msg_len - 16
        op = _le32(s.hdr, 12)
        status, code, flags, rows, err = ST_OK, 0, 0, 0, _NONE
        have_code = False
        if op == OP_MSG and length >= 5 and b[4] == 0:
            ds, limit = 5, length - (4 if _le32(b, 0) & 1 and length >= 9 else 0)
        elif op == OP_REPLY and length >= 20:
            if _le32(b, 0) & 2:
                status = ST_ERROR
            ds, limit = 20, length
        else:
            return status, code, flags, rows, err
        k = Walk(b, w)
        r = k.open(ds, limit)
        if r == _PARTIAL:
            flags |= TRUNCATED
        if r != 1:
            return status, code, flags, rows, err
        while (r := k.next()) == 1:
            name = k.named()
            if name == b"ok" and k.whole():
                if k.ty == 0x01:
                    zero = _F64.unpack_from(b, k.v)[0] == 0.0
                elif k.ty == 0x08:
                    zero = b[k.v] == 0
                else:
                    iv = k.int_value()
                    zero = iv == 0 if iv is not None else False
                if zero:
                    status = ST_ERROR
            elif name == b"code" and k.int_value() is not None:
                code, have_code = (k.int_value() or 0) & 0xFFFFFFFF, True
            elif name in (b"errmsg", b"$err") and k.ty == 0x02:
                err = k.string(ERR_CAP)
            elif name == b"n" and k.int_value() is not None:
                rows = k.int_value() or 0
                flags |= ROWS
            elif name == b"cursor" and k.ty == 0x03:
                c, rc = k.sub()
                if rc == _PARTIAL:
                    flags |= TRUNCATED
                while rc == 1 and (rc := c.next()) == 1:
                    if c.named() in (b"firstBatch", b"nextBatch") and c.ty == 0x04:
                        a, ra = c.sub()
                        if ra == _PARTIAL:
                            flags |= TRUNCATED
                        rows = 0
                        if ra == 1:
                            while (ra := a.next()) == 1:
                                rows += 1
                            if ra == _PARTIAL:
                                flags |= TRUNCATED
                        flags |= ROWS
                if rc == _PARTIAL:
                    flags |= TRUNCATED
            elif name == b"writeErrors" and k.ty == 0x04:
                a, ra = k.sub()
                if ra == _PARTIAL:
                    flags |= TRUNCATED
                if ra == 1 and (ra := a.next()) == 1:
                    status = ST_ERROR
                    if a.ty == 0x03:
                        e, re = a.sub()
                        if re == _PARTIAL:
                            flags |= TRUNCATED
                        if re == 1:
                            while (re := e.next()) == 1:
                                if not have_code and e.named() == b"code" \
                                        and e.int_value() is not None:
                                    code, have_code = (e.int_value() or 0) & 0xFFFFFFFF, True
                                elif err[2] == 0 and e.named() == b"errmsg" and e.ty == 0x02:
                                    err = e.string(ERR_CAP)
                            if re == _PARTIAL:
                                flags |= TRUNCATED
                if ra == _PARTIAL:
                    flags |= TRUNCATED
        if r == _PARTIAL:
            flags |= TRUNCATED
        return status, code, flags, rows, err

    def _result(self, entry: tuple[int, int, int], status: int, code: int, flags: int,
                rows: int, err: tuple[bytes, int], size: int, now: int) -> None:
        t, seq, _ = entry
        self._emit("R", flags, [err], seq, status, rows, size, now - t if now >= t else 0,
                   code)

    def _reply(self, now: int) -> None:
        s = self.side[1]
        to = _le32(s.hdr, 8)
        i = next((i for i, e in enumerate(self.fifo) if e[2] == to), -1)
        if i < 0:
            return
        for e in self.fifo[:i]:
            self._result(e, ST_UNANSWERED, 0, 0, 0, (b"", 0), 0, now)
        status, code, flags, rows, err = self._read_reply()
        text = (bytes(s.body[err[0]:err[0] + err[1]]), err[2])
        self._result(self.fifo[i], status, code, flags, rows, text, s.msg_len, now)
        del self.fifo[:i + 1]

    # -- the stream -------------------------------------------------------------------

    def feed(self, side: int, data: bytes | bytearray | memoryview, now_ns: int) -> int:
        p = memoryview(data).cast("B")
        n, i = len(p), 0
        if side not in (0, 1) or self.dead[side]:
            return n
        s = self.side[side]
        cap = REQ_WIN if side == 0 else REPLY_WIN
        while i < n:
            if len(s.hdr) < 16:
                k = min(16 - len(s.hdr), n - i)
                s.hdr += p[i:i + k]
                i += k
                if len(s.hdr) < 16:
                    break
                s.msg_len = _le32(s.hdr, 0)
                if s.msg_len < 16 or s.msg_len > MAX_LEN:
                    if side == 0:
                        self._emit("M", 0, [], 0, BAD_LENGTH, s.offset, 0, 0)
                    self.dead[side] = True
                    break
                s.left = s.msg_len - 16
                s.body = bytearray()
            else:
                m = min(s.left, n - i)
                k = min(cap - len(s.body), m)
                s.body += p[i:i + k]
                s.left -= m
                i += m
            if s.left == 0:
                if side == 0:
                    self._request(now_ns)
                else:
                    self._reply(now_ns)
                s.offset += s.msg_len
                s.hdr = bytearray()
        return n

    def end(self, now_ns: int) -> None:
        """Every outstanding request: UNFINISHED."""
        for e in self.fifo:
            self._result(e, ST_UNFINISHED, 0, 0, 0, (b"", 0), 0, now_ns)
        self.fifo = []
