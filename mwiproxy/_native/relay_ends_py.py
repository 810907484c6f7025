"""The ends a pure relay (relay_py.Relay) reads and writes: a plain socket, a TLS side
(an SSLObject over its socket), TLS inside TLS (records carried in another end's
plaintext) and the `-ping` framing over any of them. Each end is non-blocking: recv()
gives a chunk, b"" at EOF or None when nothing is there yet; send() and flush() raise
BlockingIOError while the socket is full.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import time

from mwiproxy.wire import ping

from .relaytypes import Framing, timeout_ms
from .tls_py import InnerTLSParts, TLSParts

CHUNK = 64 * 1024


class PlainEnd:
    """A plain socket side."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes | None:
        """A chunk, b"" at EOF, None when nothing is there yet."""
        try:
            return self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return None

    def send(self, data: memoryview) -> int:
        return self.sock.send(data)

    def flush(self) -> None:
        """Push bytes the side holds itself (nothing for plain sockets)."""

    def buffered(self) -> bool:
        return False

    def shut_wr(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


class TLSEnd(PlainEnd):
    """A TLS side: plaintext in and out of an SSLObject, ciphertext through its socket."""

    __slots__ = ("obj", "incoming", "outgoing", "tx")

    def __init__(self, parts: TLSParts) -> None:
        super().__init__(parts.sock)
        self.obj, self.incoming, self.outgoing = parts.obj, parts.incoming, parts.outgoing
        self.tx = b""  # ciphertext the socket did not take yet

    def recv(self) -> bytes | None:
        while True:
            try:
                return self.obj.read(CHUNK)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            self.flush_quietly()
            raw = self.pull()
            if raw is None:
                return None
            if raw:
                self.incoming.write(raw)
            else:
                self.incoming.write_eof()

    def pull(self) -> bytes | None:
        """Ciphertext from below: b"" at its end, None when nothing is there yet."""
        return PlainEnd.recv(self)  # the socket's bytes (recv above is the plaintext's)

    def send(self, data: memoryview) -> int:
        self.flush()
        n = self.obj.write(data)
        self.flush_quietly()
        return n

    def flush(self) -> None:
        """Raises BlockingIOError while ciphertext is left over."""
        self.tx += self.outgoing.read()
        while self.tx:
            n = self.sock.send(self.tx)
            self.tx = self.tx[n:]

    def flush_quietly(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.flush()

    def buffered(self) -> bool:
        return self.obj.pending() > 0 or self.incoming.pending > 0

    def shut_wr(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()  # close_notify; their half may still come
        self.flush_quietly()
        self.sock.shutdown(socket.SHUT_WR)


class InnerTLSEnd(TLSEnd):
    """TLS inside TLS: this side's records travel in the plaintext of `carrier`."""

    __slots__ = ("carrier",)

    def __init__(self, parts: InnerTLSParts) -> None:
        outer = TLSEnd(parts.outer)  # framed: each flush of records is one frame in there
        self.carrier = outer if parts.framing is None else FramedEnd(outer, parts.framing)
        self.sock = parts.sock
        self.obj, self.incoming, self.outgoing = parts.obj, parts.incoming, parts.outgoing
        self.tx = b""

    def pull(self) -> bytes | None:
        return self.carrier.recv()  # the carrier's plaintext is our ciphertext

    def flush(self) -> None:
        """Raises BlockingIOError while ciphertext is left over (here or in the carrier)."""
        self.tx += self.outgoing.read()
        while self.tx:
            n = self.carrier.send(memoryview(self.tx))
            self.tx = self.tx[n:]
        self.carrier.flush()

    def buffered(self) -> bool:
        return super().buffered() or self.carrier.buffered()

    def shut_wr(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()  # our close_notify, then the carrier's
        self.flush_quietly()
        self.carrier.shut_wr()

    def keeper(self) -> FramedEnd | None:
        """The framing that gets this side's keepalives (between records), if framed."""
        return self.carrier if isinstance(self.carrier, FramedEnd) else None


class FramedEnd:
    """The `-ping` framing over another end (on its plaintext): reads are deframed, each
    chunk sent is one frame, and a keepalive goes only between frames."""

    __slots__ = ("inner", "sock", "deframer", "tx", "keepalive_ms", "last_write")

    def __init__(self, inner: PlainEnd, framing: Framing) -> None:
        self.inner, self.sock = inner, inner.sock
        self.deframer = ping.Deframer(framing.header, framing.payload_left)
        self.tx = b""  # the frame the inner end did not take yet
        self.keepalive_ms = timeout_ms(framing.keepalive)
        self.last_write = time.monotonic()

    def recv(self) -> bytes | None:
        while (data := self.inner.recv()) is not None:
            if not data:
                if self.deframer.mid_frame:  # cut, not closed: like the native ECONNRESET
                    raise ConnectionResetError(errno.ECONNRESET, "ended inside a frame")
                return b""
            if payload := self.deframer.feed(data):
                return payload
        return None

    def send(self, data: memoryview) -> int:
        self.flush()  # one frame at a time: BlockingIOError while the last is going out
        self.tx = ping.frame(bytes(data))
        self.flush_quietly()
        return len(data)

    def keepalive(self) -> None:
        if not self.tx:
            self.tx = ping.KEEPALIVE
        self.flush_quietly()

    def flush(self) -> None:
        while self.tx:
            n = self.inner.send(memoryview(self.tx))
            self.tx = self.tx[n:]
            self.last_write = time.monotonic()
        self.inner.flush()

    def flush_quietly(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.flush()

    def buffered(self) -> bool:
        return self.inner.buffered()

    def shut_wr(self) -> None:
        self.flush_quietly()
        self.inner.shut_wr()


End = PlainEnd | FramedEnd


def is_tls(end: End) -> bool:
    return isinstance(end.inner if isinstance(end, FramedEnd) else end, TLSEnd)


def keeper_of(end: End) -> FramedEnd | None:
    """Where an end's keepalives go: its framing, or the one inside its TLS."""
    if isinstance(end, FramedEnd):
        return end
    return end.keeper() if isinstance(end, InnerTLSEnd) else None
