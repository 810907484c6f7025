"""The MySQL query-audit tap, pure Python: the twin of csrc/mwi_myaudit.c, record for
record and byte for byte (see csrc/mwi_myaudit.h for the records and the rules;
tests/unit/native/test_myaudit_differential.py compares the two). The records share
csrc/mwi_pgaudit.h's layout (pgaudit_py.decode reads them); `code(record)` reads a
result's ERR code (or a PREPARE's statement id).
"""

from __future__ import annotations

import struct
from collections import deque

from .pgaudit_py import (
    ERR_CAP,
    FIFO_MAX,
    HDR,
    ST_ERROR,
    ST_OK,
    ST_UNFINISHED,
    TEXT_CAP,
    TRUNCATED,
    UNTRACKED,
)

HEAD = 9 + ERR_CAP
MAX_PAYLOAD = 0xFFFFFF
(COM_QUIT, COM_INIT_DB, COM_QUERY, COM_FIELD_LIST, COM_STATISTICS, COM_STMT_PREPARE,
 COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE, COM_STMT_FETCH) = (
    0x01, 0x02, 0x03, 0x04, 0x09, 0x16, 0x17, 0x18, 0x19, 0x1C)
PH_FIRST, PH_COLS, PH_ROWS, PH_SKIP = range(4)
MORE_RESULTS, CURSOR_EXISTS = 0x0008, 0x0040
_KINDS = {COM_QUERY: b"Q", COM_STMT_PREPARE: b"P", COM_INIT_DB: b"I",
          COM_STMT_EXECUTE: b"E", COM_STMT_CLOSE: b"C"}
_HEAD = struct.Struct("<BBHIII QQQ")
_FIELD = struct.Struct("<II")
_CAP32 = 0xFFFFFFFE


def code(rec: bytes) -> int:
    """A result record's ERR code, or its PREPARE's statement id."""
    return int.from_bytes(rec[12:16], "little")


def _le(p: bytes | bytearray, off: int, width: int) -> int:
    """A little-endian int at off (zero-padded past the end, as le32_at)."""
    return int.from_bytes(bytes(p[off:off + width]).ljust(width, b"\0"), "little")


def _le16(p: bytes | bytearray, off: int) -> int:
    return int.from_bytes(p[off:off + 2], "little") if off + 2 <= len(p) else 0


def _lenenc(p: bytes | bytearray, off: int) -> tuple[int, int]:
    if off >= len(p):
        return 0, off
    b = p[off]
    if b < 0xFB:
        return b, off + 1
    w = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(b, 0)
    if off + 1 + w > len(p):
        return 0, len(p)
    return int.from_bytes(p[off + 1:off + 1 + w], "little"), off + 1 + w


def _field(full: int, data: bytes) -> bytes:
    return _FIELD.pack(full, len(data)) + data


class _Side:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.hdr = bytearray()
        self.left = 0
        self.more = False
        self.in_msg = False
        self.full = 0
        self.head = bytearray()


class Tap:
    """feed(side, data, now_ns) -> len(data); end(now_ns); `records` (bytes each)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.side = (_Side(1 + TEXT_CAP), _Side(HEAD))
        self.blind = False
        self.seq = 0
        self.fifo: deque[tuple[int, int, int]] = deque()  # (cmd, seq, t)
        self.phase = PH_FIRST
        self.skip = 0
        self.code = 0
        self.rows = 0
        self.bytes = 0
        self.dead = False

    # -- results ------------------------------------------------------------------------

    def _complete(self, status: int, now: int, state: bytes = b"", msg: bytes = b"",
                  msg_full: int = 0) -> None:
        _, seq, t = self.fifo.popleft()
        if seq:
            self.records.append(
                _HEAD.pack(ord("R"), TRUNCATED if msg_full > len(msg) else 0, 3, seq, status,
                           self.code, self.rows, self.bytes, now - t)
                + _field(0, b"") + _field(len(state), state) + _field(msg_full, msg))
        self.phase = PH_FIRST
        self.skip = self.code = self.rows = self.bytes = 0

    def _err(self, h: bytearray, full: int, now: int) -> None:
        self.code = _le16(h, 1)
        off = 9 if len(h) >= 9 and h[3] == ord("#") else 3
        off = min(off, len(h))
        self._complete(ST_ERROR, now, bytes(h[4:9]) if off == 9 else b"", bytes(h[off:]),
                       min(full - off, _CAP32))

    def _server(self, s: _Side, now: int) -> None:  # noqa: C901 (one branch per state)
        if not self.fifo:
            return
        h = s.head
        cmd = self.fifo[0][0]
        eof = len(h) >= 1 and h[0] == 0xFE and s.full < 9
        if len(h) >= 1 and h[0] == 0xFF and self.phase != PH_SKIP:
            self._err(h, s.full, now)
            return
        if self.phase == PH_FIRST:
            ok = len(h) >= 1 and h[0] == 0
            if cmd == COM_STATISTICS:
                self._complete(ST_OK, now)
            elif cmd == COM_STMT_PREPARE and ok:
                cols, params = _le16(h, 5), _le16(h, 7)
                self.code = _le(h, 1, 4)
                self.rows = params  # a PREPARE's result: its parameter count
                self.skip = (params + 1 if params else 0) + (cols + 1 if cols else 0)
                if self.skip == 0:
                    self._complete(ST_OK, now)
                else:
                    self.phase = PH_SKIP
            elif cmd == COM_STMT_FETCH:
                self.phase = PH_ROWS
                self._server(s, now)
            elif cmd == COM_FIELD_LIST:
                if eof:
                    self._complete(ST_OK, now)
                else:
                    self.phase = PH_COLS
            elif ok:
                affected, off = _lenenc(h, 1)
                self.rows = (self.rows + affected) & 0xFFFFFFFFFFFFFFFF
                _, off = _lenenc(h, off)
                if not _le16(h, off) & MORE_RESULTS:
                    self._complete(ST_OK, now)
            elif eof:
                if not _le16(h, 3) & MORE_RESULTS:
                    self._complete(ST_OK, now)
            else:
                self.phase = PH_COLS
        elif self.phase == PH_COLS:
            if eof:
                if cmd == COM_FIELD_LIST or _le16(h, 3) & CURSOR_EXISTS:
                    self._complete(ST_OK, now)
                else:
                    self.phase = PH_ROWS
        elif self.phase == PH_ROWS:
            if eof:
                if _le16(h, 3) & MORE_RESULTS:
                    self.phase = PH_FIRST
                else:
                    self._complete(ST_OK, now)
            else:
                self.rows = (self.rows + 1) & 0xFFFFFFFFFFFFFFFF
                self.bytes = (self.bytes + s.full + 4) & 0xFFFFFFFFFFFFFFFF
        elif self.phase == PH_SKIP:
            self.skip -= 1
            if self.skip == 0:
                self._complete(ST_OK, now)

    # -- commands -----------------------------------------------------------------------

    def _client(self, s: _Side, now: int) -> None:
        if s.full == 0:
            return
        req = s.head
        cmd = req[0]
        if cmd in (COM_QUIT, COM_STMT_SEND_LONG_DATA):
            return
        track = cmd != COM_STMT_CLOSE
        if track and (self.blind or len(self.fifo) >= FIFO_MAX):
            self.blind = True
        seq = 0
        kind = _KINDS.get(cmd)
        if kind is not None:
            self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
            flags, aux, fields, nfields = 0, 0, b"", 0
            if cmd in (COM_STMT_EXECUTE, COM_STMT_CLOSE):
                aux = _le(req, 1, 4)
            if cmd == COM_STMT_EXECUTE:  # its parameters: what follows the 10-byte head
                pfull = min(max(s.full - 10, 0), _CAP32)
                kept = bytes(req[10:])
                nfields, fields = 1, _field(pfull, kept)
                if pfull > len(kept):
                    flags |= TRUNCATED
            elif cmd != COM_STMT_CLOSE:
                full = min(s.full - 1, _CAP32)
                nfields = 1
                fields = _field(full, bytes(req[1:]))
                if full > len(req) - 1:
                    flags |= TRUNCATED
            if not track or self.blind:
                flags |= UNTRACKED
            self.records.append(_HEAD.pack(kind[0], flags, nfields, seq, aux, 0, 0, 0, 0)
                                + fields)
        if track and not self.blind:
            self.fifo.append((cmd, seq, now))

    # -- the stream ---------------------------------------------------------------------

    def feed(self, side: int, data: bytes | bytearray | memoryview, now_ns: int) -> int:
        s = self.side[side]
        p = memoryview(data).cast("B")
        n, i = len(p), 0
        while i < n:
            if len(s.hdr) < 4:
                m = min(4 - len(s.hdr), n - i)
                s.hdr += p[i:i + m]
                i += m
                if len(s.hdr) < 4:
                    break
                s.left = int.from_bytes(s.hdr[:3], "little")
                s.more = s.left == MAX_PAYLOAD
                if not s.in_msg:
                    s.in_msg, s.full = True, 0
                    s.head = bytearray()
            else:
                m = min(s.left, n - i)
                room = s.cap - len(s.head)
                if room > 0:
                    s.head += p[i:i + min(room, m)]
                s.full += m
                s.left -= m
                i += m
            if s.left > 0:
                continue
            s.hdr.clear()
            if s.more:
                continue
            s.in_msg = False
            if side == 0:
                self._client(s, now_ns)
            else:
                self._server(s, now_ns)
        return n

    def end(self, now_ns: int) -> None:
        while self.fifo:
            self._complete(ST_UNFINISHED, now_ns)


__all__ = ["HDR", "Tap", "code"]
