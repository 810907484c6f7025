"""Hands a connection the cluster listener accepted (stdlib TLS, handshaken, ALPN
http/1.1 or none) to aiohttp's HTTP/1.1 protocol.

The listener's transport was made for asyncio streams; aiohttp wants to be the
transport's protocol. `serve` swaps it in (`transport.set_protocol`), feeds it whatever
the stream had buffered already, and waits until the connection is gone, so the
listener's task (cancelled at shutdown) spans the whole connection. Nothing listens
here; the certificate is the cluster's host certificate of the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

# a connection lives at most this long (a browser opens another): bounds a client that
# trickles a request forever, which aiohttp alone does not
MAX_CONNECTION_LIFETIME = 300.0


class _Forward(asyncio.Protocol):
    """Forwards every transport event to aiohttp's protocol and tells when it ended."""

    def __init__(self, inner: asyncio.Protocol, done: asyncio.Future[None]) -> None:
        self.inner, self.done = inner, done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            if not self.done.done():
                self.done.set_result(None)


async def serve(factory: Callable[[], Any], reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    # a stream socket's transport, TLS included (uvloop's is no asyncio.Transport)
    transport: Any = writer.transport
    transport.pause_reading()
    # what arrived with the end of the handshake, before the swap (CPython's
    # StreamReader keeps it in its `_buffer`)
    pending = bytes(getattr(reader, "_buffer", b""))
    at_eof = bool(getattr(reader, "_eof", False))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    proto = _Forward(factory(), done)
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if pending:
        proto.data_received(pending)
    if at_eof:
        proto.eof_received()
    transport.resume_reading()
    cap = loop.call_later(MAX_CONNECTION_LIFETIME, transport.close)
    try:
        await done
    finally:
        cap.cancel()
        if not done.done():  # cancelled: the cluster is shutting down
            with contextlib.suppress(Exception):
                transport.abort()
