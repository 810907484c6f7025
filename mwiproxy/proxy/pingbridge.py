"""Serving a `<proto>-ping` ALPN name with the handler of `<proto>`.

The handler gets the TLS stream wrapped in a `FramedStream`: it reads payload and
writes frames exactly as it would on an unframed connection, in the same process and
without a local hop. Its relay (`relay/pipe.py`) hands the framing over to the native
relay, which frames, deframes and sends the keepalives (the ping interval, set by
whoever builds the Pipe) with no Python per chunk.
"""

from __future__ import annotations

from mwiproxy.identity.certs import Identity
from mwiproxy.proxy.listener import TLSHandler
from mwiproxy.relay.streams import ByteStream, FramedStream


def framed(handler: TLSHandler) -> TLSHandler:
    """A handler for the `-ping` variant of the protocol `handler` serves (the ping
    interval is the relay's keepalive, set by whoever builds it)."""

    async def serve(stream: ByteStream, caller: Identity | None, remote: str) -> None:
        await handler(FramedStream(stream), caller, remote)

    return serve
