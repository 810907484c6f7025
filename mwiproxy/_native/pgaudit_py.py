"""The PostgreSQL query-audit tap, pure Python: the twin of csrc/mwi_pgaudit.c, record
for record and byte for byte (see csrc/mwi_pgaudit.h for the records' layout and the
rules; tests/test_pgaudit_diff.py compares the two).

`Tap.feed(side, data, now_ns)` reads side 0 (client to server) or 1 (server to client)
and appends the records it completes to `records` (bytes each); `end(now_ns)` closes the
outstanding requests. `decode(record)` turns a record into a `Record`.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

TEXT_CAP = 16384
NAME_CAP = 128
PARAM_CAP = 256
MAX_PARAMS = 64
FMT_CAP = 2 * MAX_PARAMS
TAG_CAP = 64
ERR_CAP = 256
FIFO_MAX = 1024
MAX_LEN = 1 << 30
HDR = 40
NULL = 0xFFFFFFFF

TRUNCATED, PARAMS_OMITTED, UNTRACKED = 1, 2, 4
ST_OK, ST_ERROR, ST_SKIPPED, ST_SUSPENDED, ST_EMPTY, ST_UNFINISHED = range(6)
STATUS_NAMES = ("ok", "error", "skipped", "suspended", "empty", "unfinished")
BAD_LENGTH, BAD_TYPE, BAD_FIELDS = 1, 2, 3
BAD_NAMES = {BAD_LENGTH: "bad message length", BAD_TYPE: "unknown message type",
             BAD_FIELDS: "fields overrun the message"}

# a record: kind, flags, nfields, seq, aux, (code), n1, n2, n3, then per field (full
# length, stored length) and the stored bytes (full NULL: a NULL value)
RECORD_HEAD = struct.Struct("<BBHIII QQQ")
FIELD_HEAD = struct.Struct("<II")

OP_SKIP, OP_STR, OP_INT, OP_BYTES = range(4)
CAP_NONE, CAP_FIELD, CAP_TAG, CAP_SQLSTATE, CAP_ERR = range(5)
SEEN_COMMAND, SEEN_EMPTY = 1, 2
(S_START, S_TEXT, S_NAME1, S_NAME2, S_CKIND, S_MAXROWS, S_OID, S_NFMT, S_FMT, S_NVAL,
 S_VLEN, S_VBYTES, S_TAG, S_ECODE, S_EVAL) = range(15)
_CLIENT_TYPES = frozenset(b"QPBECDHSFdcfX")
_RECORDED = frozenset(b"QPBECF")
# server messages that complete a request of one kind: ParseComplete, BindComplete,
# CloseComplete, and RowDescription / NoData for a Describe
_COMPLETES = {ord("1"): ord("P"), ord("2"): ord("B"), ord("3"): ord("C"), ord("T"): ord("D"),
              ord("n"): ord("D")}


class Malformed(Exception):
    pass


class Record(NamedTuple):  # a tuple: made per record, for each statement audited
    kind: str  # 'Q' 'P' 'B' 'E' 'C' 'F' (requests), 'R' (a result), 'M' (malformed)
    flags: int
    seq: int
    aux: int
    n1: int
    n2: int
    n3: int
    fields: tuple[tuple[int, bytes | None], ...]  # (full length, stored bytes) or NULL

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TRUNCATED)


def decode(rec: bytes) -> Record:
    kind, flags, nfields, seq, aux, _, n1, n2, n3 = RECORD_HEAD.unpack_from(rec)
    fields: list[tuple[int, bytes | None]] = []
    off = HDR
    for _ in range(nfields):
        full, stored = FIELD_HEAD.unpack_from(rec, off)
        off += 8
        fields.append((0, None) if full == NULL else (full, bytes(rec[off:off + stored])))
        off += stored
    return Record(chr(kind), flags, seq, aux, n1, n2, n3, tuple(fields))


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _s16(v: int) -> int:
    return v - (1 << 16) if v & 0x8000 else v


class _Side:
    def __init__(self) -> None:
        self.hdr = bytearray()
        self.type = 0
        self.op = OP_SKIP
        self.step = S_START
        self.body_left = 0
        self.body_len = 0
        self.off = 0
        self.msg_off = 0
        self.num = 0
        self.num_need = 0
        self.num_have = 0
        self.full = 0
        self.count = 0
        self.index = 0
        self.bytes_left = 0
        self.capture = CAP_NONE
        self.field = bytearray()
        self.field_cap = 0


class _Req:
    """The request record being built (side 0)."""

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.flags = 0
        self.seq = 0
        self.aux = 0
        self.n1 = 0
        self.fields: list[bytes] = []

    def encode(self) -> bytes:
        return RECORD_HEAD.pack(self.kind, self.flags, len(self.fields), self.seq, self.aux,
                                0, self.n1, 0, 0) + b"".join(self.fields)


class Tap:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.side = (_Side(), _Side())
        self.dead = False
        self.skipping = False
        self.overflow = False
        self.seq = 0
        self.ov_rfq = 0
        self.ov_open = 0
        self.fifo: deque[tuple[int, int, int]] = deque()  # (kind, seq, t)
        self.req: _Req | None = None
        self.dropped = 0
        self._reset()

    # -- results ----------------------------------------------------------------------

    def _reset(self) -> None:
        self.data_rows = self.tag_rows = self.bytes = 0
        self.has_tag_rows = self.failed = False
        self.seen = 0
        self.tag = b""
        self.tag_full = 0
        self.sqlstate = b""
        self.err = b""
        self.err_full = 0

    def _result(self, seq: int, status: int, duration: int) -> None:
        flags = TRUNCATED if self.tag_full > len(self.tag) or self.err_full > len(self.err) \
            else 0
        rows = self.tag_rows if self.has_tag_rows else self.data_rows
        self.records.append(
            RECORD_HEAD.pack(ord("R"), flags, 3, seq, status, 0, rows & (2**64 - 1),
                             self.bytes, duration & (2**64 - 1))
            + FIELD_HEAD.pack(self.tag_full, len(self.tag)) + self.tag
            + FIELD_HEAD.pack(len(self.sqlstate), len(self.sqlstate)) + self.sqlstate
            + FIELD_HEAD.pack(self.err_full, len(self.err)) + self.err)

    def _complete(self, status: int, now: int) -> None:
        kind, seq, t = self.fifo.popleft()
        if seq and (status != ST_OK or kind in b"QEF"):
            self._result(seq, status, now - t)
        self._reset()

    def _skip_result(self, seq: int) -> None:
        self._reset()
        self._result(seq, ST_SKIPPED, 0)

    def _skip_to_sync(self) -> None:
        while self.fifo and self.fifo[0][0] != ord("S"):
            _, seq, _ = self.fifo.popleft()
            if seq:
                self._skip_result(seq)
        if not self.fifo:
            self.skipping = True

    def _count_tag_rows(self) -> None:
        tag = self.tag
        if self.tag_full != len(tag):
            return
        i, v, mul = len(tag), 0, 1
        while i > 0 and 0x30 <= tag[i - 1] <= 0x39 and mul <= 10**15:
            v += (tag[i - 1] - 0x30) * mul
            mul *= 10
            i -= 1
        if i == len(tag) or i == 0 or tag[i - 1] != 0x20:
            return
        self.tag_rows += v
        self.has_tag_rows = True

    def _final_status(self) -> int:
        if self.failed:
            return ST_ERROR
        return ST_EMPTY if self.seen == SEEN_EMPTY else ST_OK

    def _ready_for_query(self, now: int) -> None:
        if not self.fifo:
            if self.overflow and self.ov_rfq > 0:
                self.ov_rfq -= 1
                if self.ov_rfq == 0 and self.ov_open == 0:
                    self.overflow = False
            self._reset()
            return
        while self.fifo:
            kind, seq, _ = self.fifo[0]
            if kind in b"QFS":
                self._complete(ST_OK if kind == ord("S") else self._final_status(), now)
                return
            if seq:
                self._skip_result(seq)
            self.fifo.popleft()

    def _server_done(self, s: _Side, now: int) -> None:
        k = self.fifo[0][0] if self.fifo else 0
        t = s.type
        completes = _COMPLETES.get(t)
        if completes is not None:
            if k == completes:
                self._complete(ST_OK, now)
        elif t == ord("D"):
            self.data_rows += 1
            self.bytes += 5 + s.body_len
        elif t in b"dV":
            self.bytes += 5 + s.body_len
        elif t == ord("C"):
            self._count_tag_rows()
            self.seen |= SEEN_COMMAND
            if k == ord("E"):
                self._complete(ST_OK, now)
        elif t == ord("I"):
            if k == ord("E"):
                self._complete(ST_EMPTY, now)
            else:
                self.seen |= SEEN_EMPTY
        elif t == ord("s"):
            if k == ord("E"):
                self._complete(ST_SUSPENDED, now)
        elif t == ord("E"):
            self.failed = True
            if k and k in b"PBECD":
                self._complete(ST_ERROR, now)
                self._skip_to_sync()
        elif t == ord("Z"):
            self._ready_for_query(now)

    # -- requests ---------------------------------------------------------------------

    def _overflowed(self, t: int) -> None:
        self.overflow = True
        if t == ord("S"):
            self.ov_rfq += 1
            self.ov_open = 0
        elif t in b"QF":
            self.ov_rfq += 1
        else:
            self.ov_open += 1

    def _client_done(self, s: _Side, now: int) -> None:
        t = s.type
        seq = 0
        if t == ord("S"):
            self.skipping = False
        if t not in b"SD" and t not in _RECORDED:
            return
        req = self.req
        if t in _RECORDED:
            assert req is not None
            self.seq += 1
            seq = req.seq = self.seq & 0xFFFFFFFF
            if self.skipping:
                self.records.append(req.encode())
                self._skip_result(seq)
                return
        elif self.skipping:
            return
        if self.overflow or len(self.fifo) >= FIFO_MAX:
            self._overflowed(t)
            if seq:
                assert req is not None
                req.flags |= UNTRACKED
                self.records.append(req.encode())
            return
        self.fifo.append((t, seq, now))
        if seq:
            assert req is not None
            self.records.append(req.encode())

    # -- body programs ----------------------------------------------------------------

    def _go_int(self, s: _Side, step: int, n: int) -> None:
        s.step, s.op, s.num, s.num_need, s.num_have = step, OP_INT, 0, n, 0

    def _go_str(self, s: _Side, step: int, capture: int, cap: int = 0) -> None:
        s.step, s.op, s.full, s.capture = step, OP_STR, 0, capture
        if capture == CAP_FIELD:
            s.field = bytearray()
            s.field_cap = cap
        elif capture == CAP_TAG:
            self.tag = b""
        elif capture == CAP_SQLSTATE:
            self.sqlstate = b""
        elif capture == CAP_ERR:
            self.err = b""

    def _go_skip(self, s: _Side) -> None:
        s.op, s.capture = OP_SKIP, CAP_NONE

    def _open(self, s: _Side, cap: int) -> None:
        s.field = bytearray()
        s.field_cap = cap
        s.capture = CAP_FIELD

    def _close(self, s: _Side, full: int) -> None:
        req = self.req
        assert req is not None
        req.fields.append(FIELD_HEAD.pack(full, len(s.field)) + bytes(s.field))
        if full > len(s.field):
            req.flags |= TRUNCATED
        s.capture = CAP_NONE

    def _formats_next(self, s: _Side) -> None:
        if s.index < s.count:
            self._go_int(s, S_FMT, 2)
            return
        self._close(s, 2 * s.count)
        self._go_int(s, S_NVAL, 2)

    def _values_next(self, s: _Side) -> None:
        if s.index < s.count:
            self._go_int(s, S_VLEN, 4)
        else:
            self._go_skip(s)

    def _advance(self, s: _Side, side: int) -> None:  # noqa: C901 (one step per case)
        v32, t, req = _s32(s.num), s.type, self.req
        step = s.step
        if step == S_START:
            if side == 1:
                if t == ord("C"):
                    self._go_str(s, S_TAG, CAP_TAG)
                elif t == ord("E"):
                    self._go_int(s, S_ECODE, 1)
                else:
                    self._go_skip(s)
            elif t == ord("Q"):
                self._go_str(s, S_TEXT, CAP_FIELD, TEXT_CAP)
            elif t in b"PBE":
                self._go_str(s, S_NAME1, CAP_FIELD, NAME_CAP)
            elif t == ord("C"):
                self._go_int(s, S_CKIND, 1)
            elif t == ord("F"):
                self._go_int(s, S_OID, 4)
            else:
                self._go_skip(s)
            return
        if side == 1:
            if step == S_TAG:
                self.tag_full = s.full
                self._go_skip(s)
            elif step == S_ECODE:
                if s.num == 0:
                    self._go_skip(s)
                else:
                    self._go_str(s, S_EVAL, CAP_SQLSTATE if s.num == ord("C")
                                 else CAP_ERR if s.num == ord("M") else CAP_NONE)
            elif step == S_EVAL:
                if s.capture == CAP_ERR:
                    self.err_full = s.full
                s.capture = CAP_NONE
                self._go_int(s, S_ECODE, 1)
            return
        assert req is not None
        if step == S_TEXT:
            self._close(s, s.full)
            self._go_skip(s)
        elif step == S_NAME1:
            self._close(s, s.full)
            if t == ord("P"):
                self._go_str(s, S_TEXT, CAP_FIELD, TEXT_CAP)
            elif t == ord("B"):
                self._go_str(s, S_NAME2, CAP_FIELD, NAME_CAP)
            elif t == ord("E"):
                self._go_int(s, S_MAXROWS, 4)
            else:
                self._go_skip(s)
        elif step == S_CKIND:
            req.aux = s.num
            self._go_str(s, S_NAME1, CAP_FIELD, NAME_CAP)
        elif step in (S_MAXROWS, S_OID):
            req.aux = s.num
            if step == S_MAXROWS:
                self._go_skip(s)
            else:
                self._go_int(s, S_NFMT, 2)
        elif step == S_NAME2:
            self._close(s, s.full)
            self._go_int(s, S_NFMT, 2)
        elif step == S_NFMT:
            if _s16(s.num) < 0:
                raise Malformed
            s.count, s.index = s.num, 0
            self._open(s, FMT_CAP)
            self._formats_next(s)
        elif step == S_FMT:
            if len(s.field) + 2 <= s.field_cap:
                s.field += bytes(((s.num >> 8) & 0xFF, s.num & 0xFF))
            s.index += 1
            self._formats_next(s)
        elif step == S_NVAL:
            if _s16(s.num) < 0:
                raise Malformed
            s.count, s.index = s.num, 0
            if t == ord("B"):
                req.aux = s.count
            else:
                req.n1 = s.count
            if s.count > MAX_PARAMS:
                req.flags |= PARAMS_OMITTED
            self._values_next(s)
        elif step == S_VLEN:
            if v32 < -1:
                raise Malformed
            if v32 == -1:
                if s.index < MAX_PARAMS:
                    req.fields.append(FIELD_HEAD.pack(NULL, 0))
                s.index += 1
                self._values_next(s)
                return
            s.full = s.bytes_left = v32
            s.capture = CAP_NONE
            if s.index < MAX_PARAMS:
                self._open(s, PARAM_CAP)
            if v32 > 0:
                s.step, s.op = S_VBYTES, OP_BYTES
                return
            self._value_done(s)
        elif step == S_VBYTES:
            self._value_done(s)

    def _value_done(self, s: _Side) -> None:
        if s.capture == CAP_FIELD:
            self._close(s, s.full)
        s.index += 1
        self._values_next(s)

    def _store(self, s: _Side, data: bytes | memoryview) -> None:
        c = s.capture
        if c == CAP_FIELD:
            room = s.field_cap - len(s.field)
            if room > 0:
                s.field += data[:room]
        elif c == CAP_TAG:
            self.tag += bytes(data[:TAG_CAP - len(self.tag)])
        elif c == CAP_SQLSTATE:
            self.sqlstate += bytes(data[:5 - len(self.sqlstate)])
        elif c == CAP_ERR:
            self.err += bytes(data[:ERR_CAP - len(self.err)])

    def _body(self, s: _Side, side: int, p: memoryview) -> None:
        k, n = 0, len(p)
        while k < n:
            if s.op == OP_INT:
                while k < n and s.num_have < s.num_need:
                    s.num = ((s.num << 8) | p[k]) & 0xFFFFFFFF
                    s.num_have += 1
                    k += 1
                if s.num_have < s.num_need:
                    return
            elif s.op == OP_STR:
                q = bytes(p[k:]).find(0)
                m = n - k if q < 0 else q
                self._store(s, p[k:k + m])
                s.full += m
                k += m
                if q < 0:
                    return
                k += 1
            elif s.op == OP_BYTES:
                m = min(s.bytes_left, n - k)
                self._store(s, p[k:k + m])
                s.bytes_left -= m
                k += m
                if s.bytes_left:
                    return
            else:
                return
            self._advance(s, side)

    # -- the stream -------------------------------------------------------------------

    def _malformed(self, s: _Side, side: int, why: int, base: int) -> int:
        self.records.append(RECORD_HEAD.pack(ord("M"), 0, 0, 0, side << 8 | why, 0,
                                             s.msg_off, 0, 0))
        self.dead = True
        return max(0, s.msg_off - base)

    def _begin(self, s: _Side, side: int) -> None:
        s.type = s.hdr[0]
        length = int.from_bytes(s.hdr[1:5], "big")
        if side == 0 and s.type not in _CLIENT_TYPES:
            raise _Bad(BAD_TYPE)
        if length < 4 or length > MAX_LEN:
            raise _Bad(BAD_LENGTH)
        s.body_len = s.body_left = length - 4
        s.step, s.capture, s.num = S_START, CAP_NONE, 0
        if side == 0 and s.type in _RECORDED:
            self.req = _Req(s.type)
        self._advance(s, side)

    def _finish(self, s: _Side, side: int, now: int) -> None:
        s.hdr.clear()
        if s.op != OP_SKIP:
            raise Malformed
        if side == 0:
            self._client_done(s, now)
        else:
            self._server_done(s, now)

    def feed(self, side: int, data: bytes | bytearray | memoryview, now_ns: int) -> int:
        """Returns len(data), or (once) how many bytes came before a malformed message
        (the tap is dead from there: later feeds return 0)."""
        s = self.side[side]
        base = s.off
        p = memoryview(data).cast("B")
        n, i = len(p), 0
        if self.dead:
            return 0
        while i < n:
            try:
                if len(s.hdr) < 5:
                    if not s.hdr:
                        s.msg_off = base + i
                    m = min(5 - len(s.hdr), n - i)
                    s.hdr += p[i:i + m]
                    i += m
                    if len(s.hdr) < 5:
                        break
                    try:
                        self._begin(s, side)
                    except Malformed:
                        raise _Bad(BAD_FIELDS) from None
                else:
                    m = min(s.body_left, n - i)
                    self._body(s, side, p[i:i + m])
                    s.body_left -= m
                    i += m
                if s.body_left == 0:
                    self._finish(s, side, now_ns)
            except _Bad as bad:
                return self._malformed(s, side, bad.why, base)
            except Malformed:
                return self._malformed(s, side, BAD_FIELDS, base)
        s.off = base + n
        return n

    def end(self, now_ns: int) -> None:
        while self.fifo:
            _, seq, t = self.fifo[0]
            if seq:
                self._result(seq, ST_UNFINISHED, now_ns - t)
            self.fifo.popleft()
            self._reset()


class _Bad(Exception):
    def __init__(self, why: int) -> None:
        super().__init__(why)
        self.why = why


class _AnyTap(Protocol):
    """A tap of any protocol (this one, myaudit_py.Tap)."""

    records: list[bytes]

    def feed(self, side: int, data: bytes | bytearray | memoryview, now_ns: int) -> int: ...
    def end(self, now_ns: int) -> None: ...


class AuditFeed:
    """A pure relay's tap (relay_py.Relay(audit=...)): each chunk read goes through it,
    and its records go to on_audit on the loop (call_soon: in order, before on_done).
    Nothing waits here, so audit_wait changes nothing in the pure build."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_audit: Callable[[list[bytes]], object], tap: _AnyTap | None = None) -> None:
        self._loop = loop
        self._on_audit = on_audit
        self.tap: _AnyTap = tap if tap is not None else Tap()
        self.stopped = False  # side 0 broke the protocol: it is read no more

    def feed(self, side: int, data: bytes) -> bytes:
        """What of `data` goes on (side 0 stops before a malformed message)."""
        k = self.tap.feed(side, data, time.monotonic_ns())
        if side == 0 and k < len(data):
            self.stopped = True
            data = data[:k]
        self._hand()
        return data

    def end(self) -> None:
        self.tap.end(time.monotonic_ns())
        self._hand()

    def _hand(self) -> None:
        if self.tap.records:
            records, self.tap.records = self.tap.records, []
            self._loop.call_soon(self._on_audit, records)
