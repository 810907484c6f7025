"""The local proxy resumes its TLS session to the cluster proxy (a real ProxyListener on
its native path) from the second connection on, and never across a certificate change:
renewed credentials mean a new client context, which starts with no session."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mwiproxy import _native
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.proxy.listener import ProxyListener, ServerTLS
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire import alpn
from mwiproxy.wire import postgres as pg

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")


def _server_tls() -> ServerTLS:
    key = generate_private_key()
    cert = HOST_CA.sign_server("localhost", ["localhost"], key.public_key(),
                               dt.timedelta(hours=1))
    return ServerTLS(cert_pem(cert), private_key_pem(key), USER_CA.cert_pem)


def _creds() -> tuple[bytes, bytes, bytes]:
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x",
                     route=DatabaseRoute("db", "postgres", "alice", "example-db"))
    cert = USER_CA.sign_identity(ident, key.public_key(), dt.timedelta(minutes=5))
    return cert_pem(cert), private_key_pem(key), HOST_CA.cert_pem


class Cluster:
    """The cluster proxy's listener; its handler answers the first packet and records the
    client certificate each connection signed in with."""

    def __init__(self) -> None:
        self.listener = ProxyListener("127.0.0.1", 0, _server_tls)
        self.callers: list[bytes] = []
        self.listener.route_tls(alpn.POSTGRES, self._serve)

    async def _serve(self, stream: ByteStream, caller: Identity | None, _remote: str) -> None:
        self.callers.append(caller.cert_der if caller else b"")
        await stream.write((await stream.read(65536)).upper())
        await stream.read(65536)  # until the client goes
        stream.close()


def _spy_on_dials(local: LocalProxy) -> list[tuple[bool, Any]]:
    """(resumed, context) of each dial the local proxy makes."""
    dials: list[tuple[bool, Any]] = []
    handshake = local._handshake

    async def spy(ctx: _native.TLSContext, host: str, port: int) -> _native.TLSStream:
        stream = await handshake(ctx, host, port)  # the server name was checked in there
        dials.append((stream.session_reused(), ctx))
        return stream

    local._handshake = spy  # type: ignore[method-assign]
    return dials


async def _connect(local: LocalProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", local.port)
    startup = pg.build_startup({"user": "alice"})
    writer.write(startup)
    assert await asyncio.wait_for(reader.readexactly(len(startup)), 10) == startup.upper()
    writer.close()


def test_the_second_dial_resumes_and_a_new_certificate_starts_afresh():
    current = {"creds": _creds()}

    async def main() -> tuple[list[tuple[bool, Any]], list[bytes], list[bytes]]:
        cluster = Cluster()
        await cluster.listener.start()
        local = LocalProxy(listen="127.0.0.1:0",
                           proxy_addr="{}:{}".format(*cluster.listener.address),
                           service="db", credentials=lambda: current["creds"], tunnel=True)
        dials = _spy_on_dials(local)
        await local.start()
        issued = [current["creds"][0]]
        for _ in range(2):
            await _connect(local)
        current["creds"] = _creds()  # renewed: a new certificate and key
        issued.append(current["creds"][0])
        for _ in range(2):
            await _connect(local)
        await local.close()
        await cluster.listener.close()
        return dials, cluster.callers, issued

    dials, callers, issued = asyncio.run(main())
    assert [resumed for resumed, _ in dials] == [False, True, False, True]
    first_ctx, renewed_ctx = dials[0][1], dials[2][1]
    assert dials[1][1] is first_ctx and dials[3][1] is renewed_ctx
    assert renewed_ctx is not first_ctx  # the old context's sessions stay with it
    ders = [_der(pem) for pem in issued]
    assert callers == [ders[0], ders[0], ders[1], ders[1]]


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
