"""The steady-state relay between two set-up streams: the one place that decides how
bytes are copied.

Both ends leave Python and `_native.Relay` joins them: a plain `SocketStream` or a
handshaken `_native.TLSStream`, which may be TLS inside TLS (`TLSStream.wrap_inner`, the
client's own TLS in non-tunnel mode), either of them under `-ping` framing
(`FramedStream`), or with the framing between the two TLS layers (`wrap_inner(framing=)`,
non-tunnel `-ping`). TLS records are read, decrypted, encrypted and written on the
native worker, frames are cut and made there, and so are the keepalives toward framed
ends that had nothing written for `keepalive` seconds; nothing runs per chunk in Python.
Without the extensions the pure twin (`_native/relay_py.py`) does the same on the loop.

Bytes read past the end of the setup phase are not lost: callers write them to the
other end before `run()`.

`count_as` (a label tuple, e.g. (service, mode)) adds the relay's bytes to that slot of
the engine's CounterTable, where metrics read them at scrape time, live sessions
included (metrics/relaybytes.py); side a is the client's (a -> b = client_to_server).

`inspect` (an `Inspect`) has the relay frame side a's plaintext (after TLS and `-ping`
deframing) message by message, natively (csrc/mwi_inspect.c; twin _native/inspect_py.py):
the few messages the protocol's rule marks (Redis AUTH, HELLO, RESET and every inline
command; MySQL COM_INIT_DB, COM_CHANGE_USER; MongoDB every message but an OP_MSG whose
`$db` is one of `allowed` and whose command is not one Python decides (authentication,
the handshake, aggregate, mapReduce): see csrc/mwi_inspect.h) are HELD: what came before goes on, reading side a pauses, and
`decide(message)` runs on the loop with the message's exact bytes.
None: the message goes on and the relay with it. Bytes: refused, the pipe ends as
"refused" with those bytes as the farewell to side a; the message never reaches b.
`Answer(reply)`: the message is dropped, `reply` goes to side a (in its framing and TLS)
behind what b already sent, and the pipe goes on (MongoDB refuses one command with an
error reply). `Replace(message)`: those bytes go on to b in its place (MongoDB's
handshake, rewritten), and the pipe goes on. If
`decide` raises, the pipe ends as "error" without a farewell (the exception goes to the
loop's exception handler). A held message over MAX_HELD (64 KiB) or a stream that breaks
the protocol's framing ends the pipe as "protocol" with `violation_farewell`; bytes of
that message not yet forwarded never are (a value streaming out when the framing breaks
has gone out in part). MongoDB: a message over `max_message` is a violation; one over
64 KiB whose first 64 KiB do not pass (pymongo writes `$db` last) is read whole (up to
`max_message`) and judged whole: it passes natively or is held whole. Inspection never
splices, and side b must not be framed. Byte counts count forwarded bytes only (an
Answer is not b's: uncounted, like a farewell).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.relay.streams import ByteStream, FramedStream, SocketStream

CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """decide's verdict: the held message is answered with `reply` (to side a) and
    dropped; the pipe goes on."""

    reply: bytes


@dataclass(frozen=True)
class Replace:
    """decide's verdict: `message` goes on to side b in the held message's place."""

    message: bytes


Verdict = bytes | Answer | Replace | None  # None: forward; bytes: refuse and end


@dataclass(frozen=True)
class Inspect:
    """Side a's messages checked on the way (see the module doc)."""

    protocol: str  # "resp", "mysql" or "mongodb"
    decide: Callable[[bytes], Awaitable[Verdict]]  # see the module doc
    violation_farewell: bytes = b""  # said to side a when its framing breaks
    allowed: tuple[str, ...] = ()  # mongodb: the `$db` names whose OP_MSGs pass natively
    max_message: int = _native.MONGO_MAX_MESSAGE  # mongodb: the server's maxMessageSizeBytes


@dataclass(frozen=True)
class Audit:
    """Both directions' plaintext through the query-audit tap of `protocol` (natively:
    csrc/mwi_pgaudit.h; twin _native/pgaudit_py.py): `on_records(records)` runs on the
    loop with its records in batches (never per message), the last ones before the pipe
    ends. A malformed message of side a stops reading a where it shows (what of it was
    read in earlier chunks has gone on) and its record says so (the owner closes the pipe). `wait`: the relay stops reading while
    records wait for the loop, rather than drop those that do not fit (counted:
    PipeStats.audit_dropped)."""

    protocol: str  # "postgres", "mysql" (csrc/mwi_myaudit.h: with the inspector too)
    on_records: Callable[[list[bytes]], None]
    wait: bool = False


@dataclass
class PipeStats:
    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    reason: str = ""
    native: bool = False
    audit_dropped: int = 0  # audit records the relay dropped (the loop was behind)


class Pipe:
    """Relays a ↔ b until both directions end, either side fails, or close() is called."""

    def __init__(self, a: ByteStream, b: ByteStream, *, idle_timeout: float | None = None,
                 close_timeout: float = CLOSE_TIMEOUT, keepalive: float | None = None,
                 count_as: tuple[str, ...] | None = None,
                 inspect: Inspect | None = None, audit: Audit | None = None) -> None:
        self._a, self._b = a, b
        self._inspect = inspect
        self._audit = audit
        self._deciding: asyncio.Task[None] | None = None
        self._count_as = count_as
        self._idle = idle_timeout
        self._close_timeout = close_timeout
        self._keepalive = keepalive
        self.stats = PipeStats()
        self._relay: _native.Relay | None = None
        self._farewell = b""
        self._hold_all = False

    def close(self, reason: str = _native.REASON_CLOSED, farewell_to_a: bytes = b"") -> None:
        """Cut both sides now (a lock, an expired certificate, shutdown), telling side a
        why first if `farewell_to_a` is given (the first farewell wins). The relay stops
        reading both sides, delivers to a what it already read from b, then the farewell
        (one frame on a framed side, inside its TLS), then closes (bounded by the close
        timeout), so a gets a prefix of b's stream and then the whole farewell. The relay
        knows no protocol: between queries that prefix ends on a message boundary; cut
        while a result streams, it may not, and the client then reads a broken message
        instead."""
        if not self.stats.reason:
            self.stats.reason = reason
        self._farewell = self._farewell or farewell_to_a
        if self._relay is not None:
            self._relay.close(self._farewell, _relay_reason(reason))

    def hold_all(self) -> None:
        """mongodb: from side a's next message on, every message goes to decide (none
        passes natively): a cut session answers each with why (_native.Relay.hold_all)."""
        self._hold_all = True
        if self._relay is not None:
            self._relay.hold_all()

    async def run(self) -> PipeStats:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        framed_a, framed_b = self._framing(self._a), self._framing(self._b)
        slot = None if self._count_as is None else \
            _native.engine_for(loop).counters.slot(self._count_as)
        self._relay = _native.Relay(
            loop, _take(self._a), _take(self._b), lambda r: _settle(done, r),
            idle_timeout=self._idle, close_timeout=self._close_timeout,
            framed_a=framed_a, framed_b=framed_b, counter_slot=slot,
            inspect=None if self._inspect is None else self._inspect.protocol,
            on_held=None if self._inspect is None else self._on_held,
            inspect_allowed=() if self._inspect is None else self._inspect.allowed,
            inspect_max_message=_native.MONGO_MAX_MESSAGE if self._inspect is None
            else self._inspect.max_message,
            audit=None if self._audit is None else self._audit.protocol,
            on_audit=None if self._audit is None else self._audit.on_records,
            audit_wait=self._audit is not None and self._audit.wait)
        self._relay.start()
        if self._hold_all:
            self._relay.hold_all()
        self.stats.native = True  # by the relay (either build), not a copy in Python
        if self.stats.reason:  # closed while being set up
            self._relay.close(self._farewell, _relay_reason(self.stats.reason))
        try:
            reason = await done
        except asyncio.CancelledError:  # the owner is going away: so does the relay
            self._relay.close(self._farewell)
            self._count(_native.REASON_CLOSED)  # what moved until now, for the owner's log
            raise
        finally:
            if self._deciding is not None:
                self._deciding.cancel()
        self._count(reason)
        return self.stats

    def _on_held(self, message: bytes | None) -> None:
        """The relay holds a message of side a (or saw its framing break: None)."""
        assert self._inspect is not None
        if message is None:
            self.close(_native.REASON_PROTOCOL, self._inspect.violation_farewell)
            return
        self._deciding = asyncio.get_running_loop().create_task(self._decide(message))

    async def _decide(self, message: bytes) -> None:
        assert self._inspect is not None and self._relay is not None
        try:
            verdict = await self._inspect.decide(message)
        except Exception as exc:
            self.close(_native.REASON_ERROR)
            asyncio.get_running_loop().call_exception_handler(
                {"message": "Inspect.decide failed: the pipe ends", "exception": exc})
            return
        if verdict is None:
            self._relay.resume()
        elif isinstance(verdict, Answer):
            self._relay.answer(verdict.reply)
        elif isinstance(verdict, Replace):
            self._relay.resume(verdict.message)
        else:
            self.close(_native.REASON_REFUSED, verdict)

    def live_bytes(self) -> tuple[int, int]:
        """(a → b, b → a) relayed so far (the final counts once it ended)."""
        if self._relay is not None:
            try:
                counters = self._relay.stats()
            except (RuntimeError, ValueError):  # cannot be read now: the last counts
                pass
            else:
                return counters.bytes_a_to_b, counters.bytes_b_to_a
        return self.stats.bytes_a_to_b, self.stats.bytes_b_to_a

    def _count(self, reason: str) -> None:
        assert self._relay is not None
        counters = self._relay.stats()
        self.stats.bytes_a_to_b = counters.bytes_a_to_b
        self.stats.bytes_b_to_a = counters.bytes_b_to_a
        self.stats.audit_dropped = self._relay.audit_dropped
        self.stats.reason = self.stats.reason or reason

    def _framing(self, stream: ByteStream) -> _native.Framing | None:
        """The `-ping` framing of a side: its reading state and the keepalive interval;
        for TLS framed inside, the reading state is in the TLS stream already."""
        if isinstance(stream, FramedStream):
            return stream.framing(self._keepalive)
        if isinstance(stream, _native.TLSStream) and stream.framed:
            return _native.Framing(self._keepalive)
        return None


def _take(stream: ByteStream) -> int | _native.TLSStream:
    """What the relay takes over: a socket's fd, or the TLS stream itself."""
    if isinstance(stream, FramedStream):
        return _take(stream.inner)
    if isinstance(stream, SocketStream):
        return stream.detach()
    if isinstance(stream, _native.TLSStream):
        return stream
    raise TypeError(f"the relay cannot take a {type(stream).__name__} over")


def _relay_reason(reason: str) -> str:
    """What the relay itself ends as: the owner's own reasons (a lock, ...) are "closed"."""
    return reason if reason in _native.CLOSE_REASONS else _native.REASON_CLOSED


def _settle(done: asyncio.Future[str], reason: str) -> None:
    if not done.done():
        done.set_result(reason)
