"""The database hop and TLS sessions, against a real PostgreSQL 15: its server turns
session tickets and its session cache off (be-secure-openssl.c: SSL_OP_NO_TICKET,
SSL_SESS_CACHE_OFF), so a client context has nothing to keep and offers nothing; every
connection is a full handshake and signs in as before, on both builds."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mwiproxy._native import tls_py
from mwiproxy.devkit import postgres
from mwiproxy.wire import postgres as pg
from tests.unit.native.pki import CA

try:
    from mwiproxy._native import _relay as _native_tls
except ImportError:
    _native_tls = None  # type: ignore[assignment]

BUILDS = [
    pytest.param(tls_py, id="py"),
    pytest.param(_native_tls, id="native", marks=[
        pytest.mark.native_only,
        pytest.mark.skipif(_native_tls is None, reason="extension not built")]),
]
READY = b"Z\x00\x00\x00\x05"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bytes]]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    ca = CA()
    issued = ca.issue("db", dns=["localhost"])
    root = tmp_path_factory.mktemp("pg-tls")
    files = []
    for name, data in (("crt", issued.cert_pem), ("key", issued.key_pem), ("cas", ca.pem)):
        (root / name).write_bytes(data)
        files.append(str(root / name))
    server = postgres.PostgresServer(
        ssl_files=(files[0], files[1], files[2]),
        hba=["local all all trust", "hostssl all all 127.0.0.1/32 trust"]).start()
    try:
        yield server.port, ca.pem
    finally:
        server.stop()
        for f in files:
            Path(f).unlink()


async def _sign_in(mod: Any, ctx: Any, port: int) -> tuple[bool, int]:
    """SSLRequest, TLS, startup until ReadyForQuery (any ticket would have come by then)."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    await loop.sock_sendall(sock, pg.ssl_request())
    assert await loop.sock_recv(sock, 1) == pg.SSL_YES
    stream = mod.TLSStream(loop, ctx, sock.detach(), server_hostname="localhost")
    try:
        offered = ctx.cached_sessions
        await stream.handshake()
        await stream.write(pg.build_startup({"user": "postgres", "database": "postgres"}))
        got = b""
        while READY not in got:
            chunk = await stream.read(65536)
            assert chunk, got
            got += chunk
        assert stream.session_reused() == (offered > 0)
        await stream.write(b"X\x00\x00\x00\x04")
        return stream.session_reused(), ctx.cached_sessions
    finally:
        await stream.aclose()


@pytest.mark.parametrize("mod", BUILDS)
def test_postgres_never_resumes_and_nothing_is_offered(mod: Any, database: Any) -> None:
    port, ca_pem = database
    ctx = mod.TLSContext(False, None, None, ca_pem, "required")

    async def body() -> list[tuple[bool, int]]:
        return [await _sign_in(mod, ctx, port) for _ in range(3)]

    assert asyncio.run(body()) == [(False, 0)] * 3
