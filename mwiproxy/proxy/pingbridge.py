"""Serving a `<proto>-ping` ALPN name with the handler of `<proto>`.

The handler gets the TLS stream wrapped in a `FramedStream`: it reads payload and
writes frames exactly as it would on an unframed connection, in the same process and
without a local hop. Its relay copies in Python (the native relay does not frame) and
sends the keepalives; that is why the local proxy offers the framed name only when asked.
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
