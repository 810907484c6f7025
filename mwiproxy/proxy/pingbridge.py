"""Serving a `<proto>-ping` ALPN name with the handler of `<proto>`.

The framed TLS stream is joined, through a local socket pair, to a plain stream that the
protocol handler uses exactly as it would an unframed connection — including starting
the client's own TLS on it in non-tunnel mode, which needs a real transport. A Pipe
with framing on the TLS side carries the bytes between them and sends the keepalives.

The cost is one more local hop per framed connection; it goes away when the framing
moves into the native relay with the TLS path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from mwiproxy.identity.certs import Identity
from mwiproxy.proxy.listener import Handler, server_streams
from mwiproxy.relay.pipe import Pipe

log = logging.getLogger("mwiproxy.proxy")

DEFAULT_PING_INTERVAL = 30.0


def framed(handler: Handler, ping_interval: float = DEFAULT_PING_INTERVAL) -> Handler:
    """A handler for the `-ping` variant of the protocol `handler` serves."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    caller: Identity | None, remote: str) -> None:
        near, far = socket.socketpair()
        try:
            bridge = await asyncio.open_connection(sock=far)
            inner = await server_streams(near)
        except OSError as e:
            log.warning("cannot serve a framed connection from %s: %s", remote, e)
            near.close()
            far.close()
            writer.transport.abort()
            return
        pipe = Pipe((reader, writer), bridge, framed_a=True, keepalive=ping_interval)
        relaying = asyncio.ensure_future(pipe.run())
        try:
            await handler(*inner, caller, remote)
        finally:
            inner[1].close()
            with contextlib.suppress(Exception):
                await relaying

    return serve
