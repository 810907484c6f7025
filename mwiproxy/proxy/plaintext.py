"""Answers for clients that reach the cluster port without TLS.

A PostgreSQL client pointed straight at the cluster gets a FATAL ErrorResponse saying to
go through the local proxy (after declining its SSLRequest, so psql shows the message);
an HTTP client gets a 400; other bytes just a close. All of them are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from mwiproxy import _native
from mwiproxy.wire import postgres as pg

log = logging.getLogger("mwiproxy.proxy")

MESSAGE = ("this is the mwiproxy cluster proxy port; it speaks TLS only: connect through "
           "the local proxy (`mwibot proxy --proxy=HOST:PORT --destination-dir=DIR db "
           "--port=PORT [--tunnel] SERVICE`)")
READ_TIMEOUT = 5.0
_PG_KINDS = (_native.KIND_PG_SSL, _native.KIND_PG_GSSENC, _native.KIND_PG_STARTUP)


async def refuse(sock: socket.socket, first: _native.FirstBytes, remote: str) -> None:
    try:
        if first.kind in _PG_KINDS:
            await _refuse_postgres(sock)
        elif first.kind == _native.KIND_HTTP:
            await _refuse_http(sock)
        log.info("refused a connection from %s without TLS (%s%s)", remote, first.kind,
                 f": {first.error}" if first.error else "")
    except (OSError, TimeoutError):
        pass
    finally:
        await _close_gently(sock)


async def _recv(sock: socket.socket, n: int = 65536) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, n), READ_TIMEOUT)


async def _refuse_postgres(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    data = await _recv(sock)
    while data[:8] in (pg.ssl_request(), _gssenc_request()):  # decline, read the startup
        await loop.sock_sendall(sock, pg.SSL_NO)
        data = data[8:] or await _recv(sock)
    await loop.sock_sendall(sock, pg.error_response(MESSAGE, pg.PROTOCOL_VIOLATION))


def _gssenc_request() -> bytes:
    return (8).to_bytes(4, "big") + pg.GSSENC_REQUEST_CODE.to_bytes(4, "big")


async def _refuse_http(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    await _recv(sock)
    body = (MESSAGE + "\n").encode()
    head = (f"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    await loop.sock_sendall(sock, head + body)


async def _close_gently(sock: socket.socket) -> None:
    """Shut our side and drain theirs briefly, so unread bytes do not turn the close into
    a reset that would discard the answer before the client reads it."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        sock.shutdown(socket.SHUT_WR)
        while await asyncio.wait_for(loop.sock_recv(sock, 65536), 1.0):
            pass
    sock.close()
