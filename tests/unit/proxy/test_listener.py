"""The cluster listener's native TLS path: identity from the client certificate, and a
refused client certificate answered with a TLS alert rather than a bare close."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl

import pytest

from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.proxy.listener import ProxyListener, ServerTLS
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire import alpn

HOST_CA = create_authority("host", "c")
USER_CA = create_authority("user", "c")


def _server_tls() -> ServerTLS:
    key = generate_private_key()
    cert = HOST_CA.sign_server("localhost", ["localhost"], key.public_key(),
                               dt.timedelta(hours=1))
    return ServerTLS(cert_pem(cert), private_key_pem(key), USER_CA.cert_pem)


def _client(port: int, ca: object, tmp: str) -> bytes:
    """A blocking stdlib client presenting a certificate signed by `ca`."""
    key = generate_private_key()
    cert = ca.sign_identity(Identity(user="bot-x", bot_name="x"),  # type: ignore[attr-defined]
                            key.public_key(), dt.timedelta(minutes=5))
    with open(f"{tmp}/c.crt", "wb") as f:
        f.write(cert_pem(cert))
    with open(f"{tmp}/c.key", "wb") as f:
        f.write(private_key_pem(key))
    ctx = ssl.create_default_context(cadata=HOST_CA.cert_pem.decode())
    ctx.load_cert_chain(f"{tmp}/c.crt", f"{tmp}/c.key")
    ctx.set_alpn_protocols([alpn.POSTGRES])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello")
        return tls.recv(100)


def _serve(seen: list[Identity | None]):  # type: ignore[no-untyped-def]
    async def serve(stream: ByteStream, caller: Identity | None, _remote: str) -> None:
        seen.append(caller)
        await stream.write(await stream.read(100))

    return serve


@pytest.mark.parametrize("trusted", [True, False])
def test_client_certificates_identify_or_get_a_tls_alert(trusted, tmp_path):
    async def main() -> tuple[list[Identity | None], bytes | BaseException]:
        seen: list[Identity | None] = []
        listener = ProxyListener("127.0.0.1", 0, _server_tls)
        listener.route_tls(alpn.POSTGRES, _serve(seen))
        await listener.start()
        ca = USER_CA if trusted else create_authority("user", "c")
        try:
            got: bytes | BaseException = await asyncio.to_thread(
                _client, listener.address[1], ca, str(tmp_path))
        except ssl.SSLError as e:
            got = e
        await listener.close()
        return seen, got

    seen, got = asyncio.run(main())
    if trusted:
        assert got == b"hello"
        assert seen and seen[0] is not None and seen[0].bot_name == "x"
    else:
        assert isinstance(got, ssl.SSLError) and "ALERT" in str(got), got
        assert not seen
