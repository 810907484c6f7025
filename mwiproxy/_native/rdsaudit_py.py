"""The Redis query-audit tap, pure Python: the twin of csrc/mwi_rdsaudit.c, record for
record and byte for byte (see csrc/mwi_rdsaudit.h; tests/unit/native/
test_rdsaudit_differential.py compares the two). Records: pgaudit_py.decode reads them.
"""

from __future__ import annotations

import struct

from .pgaudit_py import HDR, PARAMS_OMITTED, TRUNCATED

NAME_CAP = 64
ARG_CAP = 256
MAX_ARGS = 16
LINE_CAP = 32
INLINE = 8
_CAP32 = 0xFFFFFFFE
_FIELD = struct.Struct("<II")


class Tap:
    """feed(side, data, now_ns) -> len(data); end(now_ns); `records` (bytes each)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.dead = False
        self.bulk = False
        self.have_type = False
        self.line_type = 0
        self.line = bytearray()
        self.line_full = 0
        self.argc = self.argi = 0
        self.left = 0
        self.full = 0
        self.field = bytearray()
        self.field_cap = 0
        self.seq = 0
        self.flags = 0
        self.fields: list[bytes] = []

    def _emit(self, nargs: int) -> None:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        head = bytearray(HDR)
        head[0], head[1], head[2] = ord("K"), self.flags, len(self.fields)
        head[4:8] = self.seq.to_bytes(4, "little")
        head[8:12] = nargs.to_bytes(4, "little")
        self.records.append(bytes(head) + b"".join(self.fields))

    def _field(self, full: int, data: bytes) -> None:
        self.fields.append(_FIELD.pack(full, len(data)) + data)
        if full > len(data):
            self.flags |= TRUNCATED

    def _number(self) -> int:
        b = bytes(self.line)
        if b.endswith(b"\r"):
            b = b[:-1]
        if self.line_full > LINE_CAP or not b:
            return -2
        neg = b[:1] == b"-"
        digits = b[1:] if neg else b
        if not digits or any(c < 0x30 or c > 0x39 for c in digits):
            return -2
        v = 0
        for c in digits:
            v = v * 10 + c - 0x30
            if v > 0x7FFFFFFF:
                return -2
        return (-1 if v == 1 else -2) if neg else v

    def _inline(self) -> None:
        b = self.line
        n, i = len(b), 0
        while i < n and b[i] in b" \t":
            i += 1
        j = i
        while j < n and b[j] not in b" \t\r":
            j += 1
        if j == i:
            return
        full = j - i
        if j == n and self.line_full > n:
            full = self.line_full - i
        self.flags, self.fields = INLINE, []
        self._field(min(full, _CAP32), bytes(b[i:j]))
        self._emit(0)

    def _line_done(self) -> bool:
        if self.argc == 0:
            if self.line_type != ord("*"):
                self._inline()
                return True
            v = self._number()
            if v < -1:
                return False
            if v > 0:
                self.argc, self.argi = v, 0
                self.flags, self.fields = 0, []
            return True
        if self.line_type != ord("$"):
            return False
        v = self._number()
        if v < 0:
            return False
        self.left, self.full = v + 2, v
        self.field = bytearray()
        self.field_cap = NAME_CAP if self.argi == 0 else ARG_CAP if self.argi <= MAX_ARGS else 0
        if self.argi > MAX_ARGS:
            self.flags |= PARAMS_OMITTED
        self.bulk = True
        return True

    def _bulk_done(self) -> None:
        if self.field_cap > 0:
            self._field(self.full, bytes(self.field))
        self.bulk = False
        self.argi += 1
        if self.argi == self.argc:
            self._emit(self.argc - 1)
            self.argc = 0

    def feed(self, side: int, data: bytes | bytearray | memoryview, now_ns: int) -> int:
        p = memoryview(data).cast("B")
        n, i = len(p), 0
        if side != 0 or self.dead:
            return n
        while i < n:
            if self.bulk:
                m = min(self.left, n - i)
                d = min(max(self.left - 2, 0), m)
                k = min(self.field_cap - len(self.field), d)
                self.field += p[i:i + k]
                self.left -= m
                i += m
                if self.left == 0:
                    self._bulk_done()
                continue
            if not self.have_type:
                self.line_type = p[i]
                self.have_type = True
                if self.line_type == ord("*") or self.argc > 0:
                    i += 1
                continue
            q = bytes(p[i:]).find(b"\n")
            m = n - i if q < 0 else q
            room = NAME_CAP - len(self.line)
            self.line += p[i:i + min(room, m)]
            self.line_full += m
            i += m
            if q < 0:
                if (self.argc > 0 or self.line_type == ord("*")) and self.line_full > LINE_CAP:
                    self.dead = True
                break
            i += 1
            ok = self._line_done()
            self.line, self.line_full, self.have_type = bytearray(), 0, False
            if not ok:
                self.dead = True
                break
        return n

    def end(self, now_ns: int) -> None:
        """Nothing is outstanding: commands are not paired with replies."""
