"""The owner's verdicts on a message of side A the pure relay holds (relay_py.Relay mixes
this in): twin of mwi_relay_resume and mwi_relay_resume_with (csrc/mwi_relay_inspect.c).

resume(): the held message goes on to B; resume(message): `message` goes in its place
(MongoDB's handshake, rewritten); answer(reply): `reply` goes to A behind what B already
sent (one frame on a framed A, inside its TLS), the held message is dropped (a command
refused with its protocol's error, the session goes on; b"": dropped, no reply). Reading A goes on after each.
An answer is not B's: no byte counter counts it (like a farewell).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .relaytypes import verdict_bytes

if TYPE_CHECKING:
    from .relay_py import _Direction


class HeldVerdicts:
    if TYPE_CHECKING:
        _reason: str | None
        _bye: memoryview | None
        _dirs: tuple[_Direction, _Direction] | None
        _loop: asyncio.AbstractEventLoop

        def _gate_out(self, d: _Direction, out: bytes) -> None: ...
        def _flush(self, d: _Direction) -> None: ...
        def _on_readable(self, d: _Direction) -> None: ...

    def resume(self, message: bytes | bytearray | memoryview | None = None) -> None:
        """After on_held(message): the message (or `message` in its place) goes on to
        side B, and reading side A goes on (nothing happens unless a message is held)."""
        replacement = None if message is None else verdict_bytes(message)
        d = self._holding()
        if d is None or d.gate is None:
            return
        self._gate_out(d, d.gate.resume(replacement))
        self._read_a_again(d)

    def answer(self, reply: bytes | bytearray | memoryview) -> None:
        """After on_held(message): `reply` goes to side A, behind what side B already
        sent (b"": nothing); the held message is dropped and reading side A goes on."""
        data = verdict_bytes(reply, may_be_empty=True)
        d = self._holding()
        if d is None or d.gate is None or self._dirs is None:
            return
        ba = self._dirs[1]
        if data:
            ba.answer = memoryview(data if ba.answer is None else bytes(ba.answer) + data)
            if not ba.blocked and not ba.shut:
                self._flush(ba)
        if self._reason is None:
            self._gate_out(d, d.gate.drop())
            self._read_a_again(d)

    def hold_all(self) -> None:
        """mongodb: from side A's next message on, every message is held (none passes
        natively): twin of mwi_relay_hold_all."""
        if self._dirs is not None and self._dirs[0].gate is not None:
            self._dirs[0].gate.framer.allowed = frozenset()

    def _holding(self) -> _Direction | None:
        """Side A's direction if a message is held (and the relay lives), else None."""
        if self._reason is not None or self._bye is not None or self._dirs is None:
            return None
        d = self._dirs[0]
        if d.gate is None or not d.gate.paused or d.gate.waiting is None:
            return None
        return d

    def _read_a_again(self, d: _Direction) -> None:
        assert d.gate is not None
        if self._reason is None and not d.blocked and not d.gate.paused and not d.eof:
            self._loop.add_reader(d.src.sock.fileno(), self._on_readable, d)
            if d.src.buffered():
                self._loop.call_soon(self._on_readable, d)
