"""A fault-injecting TCP relay (asyncpg's test proxy, for TLS): clients dial it on
127.0.0.1, it forwards to a target, and its `mode` - switchable at any time, it applies
to connections opened after the switch - breaks the server's answer:

- `PASS`: forward both ways untouched.
- `DROP_REPLY`: forward the request, then swallow every byte of the reply; the
  connection stays open, so the client runs into its own timeout.
- `RESET_REPLY`: forward the first `reset_after` bytes of the reply, then reset the
  connection (RST to the client, close to the server).
- `DELAY_REPLY`: hold the reply for `delay` seconds (past the client's timeout), then
  forward what is left to whoever still listens.

The server has acted on the request in every fault mode; only its answer is lost.

"The reply" is what the server sends after the client finished its TLS handshake: the
relay reads TLS record headers on the client's side and arms the fault at the client's
first application-data record (content type 23). In TLS 1.3 that is the client's
encrypted Finished: from then on the client needs nothing more from the server but the
answer (post-handshake session tickets are optional and go down with it). In TLS 1.2 it
is the request itself. Either way the handshake completes and the request arrives.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PASS = "pass"
DROP_REPLY = "drop-reply"
RESET_REPLY = "reset-reply"
DELAY_REPLY = "delay-reply"
MODES = (PASS, DROP_REPLY, RESET_REPLY, DELAY_REPLY)

TLS_APPLICATION_DATA = 23
_CHUNK = 65536


@dataclass
class RelayStats:
    connections: int = 0
    faulted: int = 0  # connections whose reply the fault swallowed, cut or delayed
    reply_bytes: list[int] = field(default_factory=list)  # per PASS connection, for sizing


class FaultRelay:
    def __init__(self, target: str, mode: str = PASS, *, reset_after: int = 0,
                 delay: float = 0.0) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.mode = mode
        self.reset_after = reset_after
        self.delay = delay
        self.stats = RelayStats()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._conns: list[_Connection] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def set_mode(self, mode: str, *, reset_after: int | None = None,
                 delay: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown relay mode {mode!r}")
        with self._lock:
            self.mode = mode
            self.reset_after = self.reset_after if reset_after is None else reset_after
            self.delay = self.delay if delay is None else delay

    def start(self) -> FaultRelay:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                conn = _Connection(self, client, server, self.mode, self.reset_after,
                                   self.delay)
                self._conns = [c for c in self._conns if not c.done.is_set()] + [conn]
                self.stats.connections += 1
            conn.start()


class _Connection:
    """One relayed connection: a thread per direction."""

    def __init__(self, relay: FaultRelay, client: socket.socket, server: socket.socket,
                 mode: str, reset_after: int, delay: float) -> None:
        self.relay = relay
        self.client, self.server = client, server
        self.mode, self.reset_after, self.delay = mode, reset_after, delay
        self.armed = threading.Event()  # the client finished its handshake
        self.done = threading.Event()
        self._records = _RecordScanner()
        self._faulted = False
        self._reply = 0

    def start(self) -> None:
        threading.Thread(target=self._client_to_server, daemon=True).start()
        threading.Thread(target=self._server_to_client, daemon=True).start()

    def _client_to_server(self) -> None:
        try:
            while data := self.client.recv(_CHUNK):
                if not self.armed.is_set() and self._records.feed(data):
                    self.armed.set()
                self.server.sendall(data)
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def _server_to_client(self) -> None:
        try:
            while data := self.server.recv(_CHUNK):
                forward = self._reply_part(data) if self.armed.is_set() else data
                if forward is None:
                    return
                if forward:
                    self.client.sendall(forward)
            if self.mode == PASS:
                self.relay.stats.reply_bytes.append(self._reply)
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self.close()

    def _reply_part(self, data: bytes) -> bytes | None:
        """What of this chunk of the reply reaches the client; None: reset, it is over."""
        seen, self._reply = self._reply, self._reply + len(data)
        if self.mode == PASS:
            return data
        if not self._faulted:
            self._faulted = True
            with self.relay._lock:
                self.relay.stats.faulted += 1
        if self.mode == DROP_REPLY:
            return b""
        if self.mode == DELAY_REPLY:
            if seen == 0:
                time.sleep(self.delay)
            return data
        room = self.reset_after - seen
        if room >= len(data):
            return data
        if room > 0:
            self.client.sendall(data[:room])
        self._reset()
        return None

    def _reset(self) -> None:
        """RST to the client: linger 0, and SHUT_RD first so that the thread blocked
        reading the client lets go of the socket (a close alone would leave it open)."""
        with contextlib.suppress(OSError):
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.client.shutdown(socket.SHUT_RD)
        self.close()

    def close(self) -> None:
        self.done.set()
        for s in (self.client, self.server):
            with contextlib.suppress(OSError):
                s.close()


class _RecordScanner:
    """Follows TLS record headers in one direction; says when an application-data
    record starts."""

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0  # body bytes of the current record still to pass

    def feed(self, data: bytes) -> bool:
        while data:
            if self._skip:
                step = min(self._skip, len(data))
                self._skip -= step
                data = data[step:]
                continue
            need = 5 - len(self._buf)
            self._buf += data[:need]
            data = data[need:]
            if len(self._buf) < 5:
                return False
            kind, length = self._buf[0], int.from_bytes(self._buf[3:5], "big")
            self._buf = b""
            if kind == TLS_APPLICATION_DATA:
                return True
            self._skip = length
        return False
