"""Pure-Python twin of csrc/mwi_inspect.c: frames a client's plaintext (relay side a)
message by message and says, per message, whether it streams through or is HELD for a
verdict from Python (a message that can switch the database user or database).

Incremental, chunking-independent, bounded: a held message is at most MAX_HELD bytes,
bytes whose fate is not decided yet (a Redis command before its first element is read,
a MySQL header before its command byte) at most PRE_MAX; large values stream through
with only counters. The C framer is the same state machine, byte for byte (the
differential test feeds both the same streams in random chunkings).

`scan(data)` -> (status, used, forward):
  MORE       all of `data` was taken; `forward` goes on to the server
  HOLD       `used` bytes were taken and a held message is complete (`held`); `forward`
             (bytes before it) goes first; the rest of `data` waits for the verdict
  VIOLATION  the stream breaks the protocol's framing; `forward` is what streamed before
             the bad byte (no byte of a held or undecided message); the framer is dead
  PASS       (mongodb) `used` bytes were taken and a buffered message passed: `forward`
             goes first, then `held`, then scanning goes on with the rest of `data`
"""

from __future__ import annotations

from . import inspect_mongo_py as mongo
from .relaytypes import INSPECT_PROTOCOLS, check_max_message, mongo_allowed

MORE, HOLD, VIOLATION, PASS = 0, 1, 2, 4
PROTOCOLS = INSPECT_PROTOCOLS  # ids shared with csrc/mwi_inspect.h (MWI_INSPECT_*)

MAX_HELD = 64 * 1024
PRE_MAX = 64
RESP_MAX_COUNT = 1024 * 1024
RESP_MAX_BULK = 512 * 1024 * 1024
_MAX_DIGITS = 19  # string2ll's range: longer numbers are never valid
_RESP_HELD_NAMES = (b"AUTH", b"HELLO", b"RESET")
_MYSQL_HELD = (0x02, 0x11)  # COM_INIT_DB, COM_CHANGE_USER
_MYSQL_CONT = 0xFFFFFF

# modes: where a byte goes
_PRE, _STREAM, _HOLDING = 0, 1, 2
# resp states
(_R_START, _R_COUNT, _R_DOLLAR, _R_BULK_LEN, _R_DATA, _R_CR, _R_LF,
 _R_INLINE) = range(8)
# mysql states
_M_HDR, _M_CMD, _M_BODY = range(3)
# mongodb states
_G_WINDOW, _G_STREAM = range(2)
_DEAD = 99


class Framer:
    """One direction's framing state (see the module doc)."""

    def __init__(self, protocol: str, allowed: tuple[str, ...] = (),
                 max_message: int = mongo.MAX_MESSAGE) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"no inspection for protocol {protocol!r}")
        self.resp = protocol == "resp"
        self.mongo = protocol == "mongodb"
        self.allowed = frozenset(mongo_allowed(allowed).split(b"\0")[:-1])
        self.max_message = check_max_message(max_message)
        self.window = 0  # mongodb: bytes to judge (0: the header first)
        self.state = _R_START if self.resp else _M_HDR
        self.mode = _PRE
        self.pre = bytearray()
        self.buf = bytearray()  # the message being held
        self.held = b""  # the last complete held message
        self.left = 0  # resp: elements left; mysql: length of the packet
        self.bulk_left = 0  # bytes of the current bulk / packet body still to come
        self.first = False  # resp: the first element decides
        self.name_len = 0  # resp: the first element's length
        self.cont = False  # mysql: the last packet had the maximal length
        self.num_neg = self.num_zero = self.num_cr = False
        self.num_digits = self.num_val = 0

    def scan(self, data: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
        view = memoryview(data).cast("B")
        out = bytearray()
        if self.state == _DEAD:
            return VIOLATION, 0, b""
        if self.mongo:
            return self._mongo_scan(view, out)
        i, n = 0, len(view)
        while i < n:
            mark = len(out)
            if self.state == (_R_DATA if self.resp else _M_BODY) and self.mode != _PRE:
                take = min(n - i, self.bulk_left)  # a run: no per-byte work when streaming
                if self.mode == _STREAM:
                    out += view[i:i + take]
                elif not self._keep(view[i:i + take]):
                    return self._violation(out)
                i += take
                self.bulk_left -= take
                st = self._data_done() if self.bulk_left == 0 else MORE
            else:
                c = view[i]
                i += 1
                if self.mode == _STREAM:
                    out.append(c)
                elif self.mode == _HOLDING:
                    if not self._keep(bytes((c,))):
                        return self._violation(out)
                else:
                    self.pre.append(c)
                st = self._resp_byte(c, out) if self.resp else self._mysql_byte(c, out)
            if st == VIOLATION:
                del out[mark:]
                return self._violation(out)
            if st == HOLD:
                self.held, self.buf = bytes(self.buf), bytearray()
                self.mode = _PRE
                return HOLD, i, bytes(out)
        return MORE, n, bytes(out)

    def _mongo_scan(self, view: memoryview, out: bytearray) -> tuple[int, int, bytes]:
        i, n = 0, len(view)
        while i < n:
            if self.state == _G_STREAM:  # the rest of a passed message: a run
                take = min(n - i, self.bulk_left)
                out += view[i:i + take]
                i += take
                self.bulk_left -= take
                if self.bulk_left == 0:
                    self.state = _G_WINDOW
                continue
            if not self.buf and n - i >= mongo.HDR:  # a whole window here: judged in place
                length = mongo.le32s(view, i)
                w = min(length, MAX_HELD)
                if mongo.HDR <= length <= self.max_message and n - i >= w and \
                        mongo.judge(self.allowed, bytes(view[i:i + w]), length):
                    out += view[i:i + w]
                    i += w
                    self.bulk_left = length - w
                    if self.bulk_left:
                        self.state = _G_STREAM
                    continue
            take = min((self.window or mongo.HDR) - len(self.buf), n - i)
            self.buf += view[i:i + take]
            i += take
            if self.window == 0 and len(self.buf) == mongo.HDR:
                length = mongo.le32s(self.buf, 0)
                if length < mongo.HDR or length > self.max_message:
                    return self._violation(out)
                self.left, self.window = length, min(length, MAX_HELD)
            if self.window == 0 or len(self.buf) < self.window:
                continue
            passes = mongo.judge(self.allowed, bytes(self.buf), self.left)
            if not passes and self.left > len(self.buf):
                self.window = self.left  # not found in the window: judged whole
                continue
            self.held, self.buf, self.window = bytes(self.buf), bytearray(), 0
            if passes:
                self.bulk_left = self.left - len(self.held)
                if self.bulk_left:
                    self.state = _G_STREAM
                return PASS, i, bytes(out)
            return HOLD, i, bytes(out)
        return MORE, n, bytes(out)

    # -- shared steps -----------------------------------------------------------------

    def _keep(self, chunk: memoryview | bytes) -> bool:
        if len(self.buf) + len(chunk) > MAX_HELD:
            return False
        self.buf += chunk
        return True

    def _violation(self, out: bytearray) -> tuple[int, int, bytes]:
        self.state = _DEAD
        self.buf, self.pre = bytearray(), bytearray()
        return VIOLATION, 0, bytes(out)

    def _emit_pre(self, out: bytearray) -> None:
        out += self.pre
        self.pre = bytearray()
        self.mode = _STREAM

    def _hold_pre(self) -> bool:
        self.buf, self.pre = self.pre, bytearray()
        self.mode = _HOLDING
        return len(self.buf) <= MAX_HELD

    def _end_message(self) -> int:
        held = self.mode == _HOLDING
        self.mode = _PRE
        return HOLD if held else MORE

    def _data_done(self) -> int:
        """The last byte of a bulk (resp) or packet body (mysql) was taken."""
        if self.resp:
            self.state = _R_CR
            return MORE
        self.state = _M_HDR
        return self._end_message()

    def _number(self, c: int) -> int | None:
        """A byte of a decimal line as Redis' string2ll reads it, ending in \\r\\n:
        VIOLATION, MORE, or None when the line is complete (value in num_val)."""
        if self.num_cr:
            if c != 0x0A:
                return VIOLATION
            if self.num_val > (1 << 63) - (0 if self.num_neg else 1):
                return VIOLATION
            if self.num_neg:
                self.num_val = -self.num_val
            return None
        if c == 0x0D:
            if not self.num_digits:
                return VIOLATION
            self.num_cr = True
        elif c == 0x2D and not self.num_digits and not self.num_neg:
            self.num_neg = True
        elif 0x30 <= c <= 0x39:
            if self.num_zero or (c == 0x30 and not self.num_digits and self.num_neg):
                return VIOLATION
            self.num_zero = c == 0x30 and not self.num_digits
            self.num_digits += 1
            if self.num_digits > _MAX_DIGITS:
                return VIOLATION
            self.num_val = self.num_val * 10 + c - 0x30
        else:
            return VIOLATION
        return MORE

    def _number_start(self) -> None:
        self.num_neg = self.num_zero = self.num_cr = False
        self.num_digits = self.num_val = 0

    # -- resp -------------------------------------------------------------------------

    def _resp_byte(self, c: int, out: bytearray) -> int:
        st = self.state
        if st == _R_START:
            if c == 0x2A:  # '*': a multibulk command; its first element decides
                self.state = _R_COUNT
                self._number_start()
                return MORE
            self.pre = bytearray()  # an inline command: held whole
            self.mode = _HOLDING
            self.buf = bytearray((c,))
            self.state = _R_INLINE
            return self._inline(c)
        if st == _R_INLINE:
            return self._inline(c)
        if st == _R_COUNT:
            r = self._number(c)
            if r is not None:
                return r
            if self.num_val <= 0:  # Redis skips an empty command
                self._emit_pre(out)
                self.state = _R_START
                self.mode = _PRE
                return MORE
            if self.num_val > RESP_MAX_COUNT:
                return VIOLATION
            self.left, self.first, self.state = self.num_val, True, _R_DOLLAR
            return MORE
        if st == _R_DOLLAR:
            if c != 0x24:
                return VIOLATION
            self.state = _R_BULK_LEN
            self._number_start()
            return MORE
        if st == _R_BULK_LEN:
            r = self._number(c)
            if r is not None:
                return r
            if self.num_val < 0 or self.num_val > RESP_MAX_BULK:
                return VIOLATION
            self.bulk_left = self.name_len = self.num_val
            if self.first and self.num_val not in (4, 5):
                self.first = False
                self._emit_pre(out)
            self.state = _R_DATA if self.bulk_left else _R_CR
            return MORE
        if st == _R_DATA:  # only undecided bytes come here one by one (mode _PRE)
            self.bulk_left -= 1
            if self.bulk_left:
                return MORE
            self.first = False
            name = bytes(self.pre[-self.name_len:]).upper()
            if name in _RESP_HELD_NAMES:
                self._hold_pre()
            else:
                self._emit_pre(out)
            self.state = _R_CR
            return MORE
        if st == _R_CR:
            if c != 0x0D:
                return VIOLATION
            self.state = _R_LF
            return MORE
        # _R_LF
        if c != 0x0A:
            return VIOLATION
        self.left -= 1
        if self.left:
            self.state = _R_DOLLAR
            return MORE
        self.state = _R_START
        return self._end_message()

    def _inline(self, c: int) -> int:
        if c == 0:  # Redis looks for the newline with strchr: it would never find it
            return VIOLATION
        if c == 0x0A:
            self.state = _R_START
            return HOLD
        return MORE

    # -- mysql ------------------------------------------------------------------------

    def _mysql_byte(self, c: int, out: bytearray) -> int:
        if self.state == _M_HDR:
            if len(self.pre) < 4:
                return MORE
            length = self.pre[0] | self.pre[1] << 8 | self.pre[2] << 16
            cont, self.cont = self.cont, length == _MYSQL_CONT
            self.left = self.bulk_left = length
            if cont or self.pre[3] != 0 or length == 0:  # not the start of a command
                self._emit_pre(out)
                if length == 0:
                    self.mode = _PRE
                    return MORE
                self.state = _M_BODY
                return MORE
            self.state = _M_CMD
            return MORE
        # _M_CMD: the command byte
        self.bulk_left = self.left - 1
        if c in _MYSQL_HELD:
            if 4 + self.left > MAX_HELD:
                return VIOLATION
            self._hold_pre()
        else:
            self._emit_pre(out)
        if self.bulk_left == 0:
            self.state = _M_HDR
            return self._end_message()
        self.state = _M_BODY
        return MORE


class Gate:
    """Side a's bytes through a Framer, for the pure relay: what goes on now, and when
    reading side a pauses for a verdict (`waiting`: the held message, or None after a
    violation)."""

    def __init__(self, protocol: str, allowed: tuple[str, ...] = (),
                 max_message: int = mongo.MAX_MESSAGE) -> None:
        self.framer = Framer(protocol, allowed, max_message)
        self.rest = memoryview(b"")  # read, not scanned yet: waits for the verdict
        self.paused = False
        self.waiting: bytes | None = None

    def feed(self, data: bytes) -> bytes:
        self.rest = memoryview(data)
        return self._run(bytearray())

    def resume(self, replacement: bytes | None = None) -> bytes:
        """The held message (or `replacement`) goes on, then whatever followed it (up to
        the next hold)."""
        assert self.paused and self.waiting is not None
        self.paused = False
        return self._run(bytearray(self.waiting if replacement is None else replacement))

    def drop(self) -> bytes:
        """The held message was answered: it goes nowhere; what followed it goes on."""
        assert self.paused and self.waiting is not None
        self.paused, self.waiting = False, None
        return self._run(bytearray())

    def _run(self, out: bytearray) -> bytes:
        while self.rest and not self.paused:
            st, used, fwd = self.framer.scan(self.rest)
            out += fwd
            self.rest = self.rest[used:]
            if st == PASS:
                out += self.framer.held
            elif st != MORE:
                self.paused = True
                self.waiting = self.framer.held if st == HOLD else None
        return bytes(out)
