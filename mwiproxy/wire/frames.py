"""Length-prefixed JSON frames: the auth API's wire format.

Each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
Requests are {"id", "method", "params"}; replies {"id", "result"} or
{"id", "error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

MAX_FRAME = 4 * 1024 * 1024
# No message needs more; deeper JSON would make Python's decoder (and any code that
# walks the result) recurse until RecursionError.
MAX_JSON_DEPTH = 64
# Frames up to this size decode on the event loop (well under a millisecond).
INLINE_DECODE = 64 * 1024
_LEN = struct.Struct(">I")


class FrameError(Exception):
    pass


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body)
    except ValueError as e:
        raise FrameError(f"malformed JSON frame: {e}") from None
    except RecursionError:
        raise FrameError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(msg, dict):
        raise FrameError("a frame must hold a JSON object")
    # counting brackets is cheap and rules out deep nesting for almost every frame
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(msg)
    return msg


def _check_depth(message: dict[str, Any]) -> None:
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise FrameError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def frame_length(header: bytes) -> int:
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    return int(n)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None on a clean end of stream."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise FrameError("stream ended inside a frame header") from None
        return None
    try:
        body = await reader.readexactly(frame_length(header))
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None
    if len(body) > INLINE_DECODE:  # a large frame takes a while to decode: off the loop
        return await asyncio.to_thread(decode_body, body)
    return decode_body(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FrameError("connection closed by the cluster")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    return decode_body(_recv_exact(sock, frame_length(_recv_exact(sock, 4))))
