"""The `-ping` framing of the ALPN protocols (e.g. `teleport-postgres-ping`).

On a connection that negotiated a `<proto>-ping` name, every write in **both
directions** is one frame: a 4-byte big-endian length, then that many bytes. A frame of
length 0 is a keepalive and carries nothing. Both directions are framed because that is
what Teleport's peers do (each end wraps the whole connection), so a client or proxy
speaking Teleport's wire format interoperates with ours.

Who sends keepalives: the cluster proxy, toward the client, whenever it has written
nothing for its ping interval — that is what keeps an idle session's NAT and load
balancer state alive. The local proxy never needs to send one; both ends accept them.

The decoder streams: a frame's payload is passed on as it arrives, never buffered
whole, so a frame may be any size a uint32 can say.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
KEEPALIVE = HEADER.pack(0)
MAX_PAYLOAD = 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One frame carrying `data` (callers split anything larger than MAX_PAYLOAD)."""
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"a ping frame holds at most {MAX_PAYLOAD} bytes")
    return HEADER.pack(len(data)) + data


class Deframer:
    """Turns the framed byte stream back into the payload stream, dropping keepalives."""

    def __init__(self, header: bytes = b"", payload_left: int = 0) -> None:
        """A deframer resuming where another stopped (see `header`, `payload_left`)."""
        if len(header) >= HEADER.size or (header and payload_left):
            raise ValueError("a deframer stops inside a header or inside a payload")
        self._header = bytearray(header)
        self._left = payload_left  # payload bytes still to come in the current frame
        self.keepalives = 0

    @property
    def header(self) -> bytes:
        """The first bytes of a header not yet complete (0-3 of them)."""
        return bytes(self._header)

    @property
    def payload_left(self) -> int:
        """Payload bytes of the current frame still to come."""
        return self._left

    @property
    def mid_frame(self) -> bool:
        """True when the stream stopped inside a frame (a truncated stream)."""
        return bool(self._header) or self._left > 0

    def feed(self, data: bytes) -> bytes:
        """The payload bytes contained in `data` (possibly b"")."""
        if self._left >= len(data) and not self._header:  # the common case: all payload
            self._left -= len(data)
            return data
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if self._left:
                take = min(self._left, len(data) - pos)
                out.append(data[pos:pos + take])
                self._left -= take
                pos += take
            else:
                pos = self._read_header(data, pos)
        return b"".join(out)

    def _read_header(self, data: bytes, pos: int) -> int:
        need = HEADER.size - len(self._header)
        self._header += data[pos:pos + need]
        if len(self._header) == HEADER.size:
            self._left = HEADER.unpack(self._header)[0]
            self._header.clear()
            if self._left == 0:
                self.keepalives += 1
        return pos + need
