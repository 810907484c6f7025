"""TLS contexts and setup streams, both builds: handshakes, identity, ALPN, SNI, refusals."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from typing import Any

import pytest

from mwiproxy._native import KIND_TLS, TLSError, classify

from .relaykit import open_fds, run, tcp_pair
from .tlskit import failed_handshake, handshaken


def test_handshake_exposes_identity_version_alpn_and_sni(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        server, client = await handshaken(
            tls_mod, pki.server_ctx(tls_mod, alpn=["mwi-pg", "mwi-redis"]),
            pki.client_ctx(tls_mod, alpn=["mwi-redis", "mwi-pg"]))
        assert server.version() == client.version() == "TLSv1.3"
        assert server.peer_cert_der() == pki.client.der
        assert client.peer_cert_der() == pki.server.der
        assert server.alpn() == client.alpn() == "mwi-pg"  # the server's preference wins
        assert server.server_name() == "proxy.mwi.test"
        await client.write(b"startup")
        assert await server.read(100) == b"startup"
        await server.write(b"ok")
        assert await client.read(100) == b"ok"
        await client.aclose()
        assert await server.read(100) == b""
        server.close()

    run(body)


@pytest.mark.parametrize(("server_alpn", "client_alpn", "chosen"), [
    (["mwi-pg", "mwi-redis"], ["mwi-redis"], "mwi-redis"),
    (["mwi-pg"], ["mwi-mysql"], None),
    (None, ["mwi-pg"], None),
    (["mwi-pg"], None, None),
])
def test_alpn_selection(tls_mod: Any, pki: Any, server_alpn: Any, client_alpn: Any,
                        chosen: str | None) -> None:
    async def body() -> None:
        server, client = await handshaken(tls_mod, pki.server_ctx(tls_mod, alpn=server_alpn),
                                          pki.client_ctx(tls_mod, alpn=client_alpn))
        assert server.alpn() == client.alpn() == chosen
        server.close()
        client.close()

    run(body)


def test_no_sni_and_optional_client_cert(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        server, client = await handshaken(
            tls_mod, pki.server_ctx(tls_mod, verify="optional"),
            pki.client_ctx(tls_mod, with_cert=False), server_name=None)
        assert server.server_name() is None
        assert server.peer_cert_der() is None
        server.close()
        client.close()

    run(body)


@pytest.mark.parametrize(("case", "side", "message"), [
    # the server completes its chain from its CA store, so the client sees an unknown root
    ("wrong_ca", "client", "certificate verify failed: self-signed certificate in certificate chain"),
    ("expired", "client", "certificate verify failed: certificate has expired"),
    ("no_client_cert", "server", "peer did not return a certificate"),
    ("client_from_other_ca", "server",
     "certificate verify failed: unable to get local issuer certificate"),
])
def test_verification_failures_say_why(tls_mod: Any, pki: Any, case: str, side: str,
                                       message: str) -> None:
    server_ctx = pki.server_ctx(tls_mod, pki.expired if case == "expired" else None)
    client_ctx = pki.client_ctx(tls_mod)
    if case == "wrong_ca":
        client_ctx = pki.client_ctx(tls_mod, ca_pem=pki.other_ca.pem)
    elif case == "no_client_cert":
        client_ctx = pki.client_ctx(tls_mod, with_cert=False)
    elif case == "client_from_other_ca":
        client_ctx = pki.client_ctx(tls_mod, pki.stranger)

    async def body() -> None:
        before = open_fds()
        server_exc, client_exc = await failed_handshake(tls_mod, server_ctx, client_ctx)
        exc = server_exc if side == "server" else client_exc
        assert isinstance(exc, TLSError), (server_exc, client_exc)
        assert str(exc) == message
        other = client_exc if side == "server" else server_exc
        assert isinstance(other, ConnectionError)  # the peer learns it failed too
        assert open_fds() <= before  # no new fds (others may be closed by GC meanwhile)

    run(body)


def test_tls_1_1_is_refused(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        c, s = tcp_pair()
        server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod, verify="none"), s.detach())
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1

        def legacy_client() -> BaseException | None:
            try:
                old.wrap_socket(c).close()
            except (ssl.SSLError, OSError) as exc:
                return exc
            return None

        outcomes: tuple[Any, ...] = await asyncio.gather(
            asyncio.to_thread(legacy_client), server.handshake(), return_exceptions=True)
        client_exc, server_exc = outcomes
        assert isinstance(server_exc, TLSError) and "unsupported protocol" in str(server_exc)
        assert client_exc is not None
        server.close()

    run(body)


def test_bad_context_arguments_are_refused(tls_mod: Any, pki: Any) -> None:
    with pytest.raises(ValueError, match="verify must be one of"):
        tls_mod.TLSContext(True, pki.server.cert_pem, pki.server.key_pem, pki.ca.pem, "maybe")
    with pytest.raises(ValueError, match="needs a certificate and a key"):
        tls_mod.TLSContext(True, None, None, pki.ca.pem)
    with pytest.raises(ValueError, match="needs a CA bundle"):
        tls_mod.TLSContext(False, None, None, None, "required")
    with pytest.raises(ValueError):
        tls_mod.TLSContext(True, b"garbage", pki.server.key_pem, pki.ca.pem)
    with pytest.raises(ValueError):  # a key that is not the certificate's
        tls_mod.TLSContext(True, pki.server.cert_pem, pki.client.key_pem, pki.ca.pem)
    with pytest.raises(ValueError, match="ALPN"):
        tls_mod.TLSContext(True, pki.server.cert_pem, pki.server.key_pem, pki.ca.pem,
                           alpn=[""])


def test_pre_read_client_hello_is_honoured(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        c, s = tcp_pair()
        s.setblocking(False)
        client = tls_mod.TLSStream(loop, pki.client_ctx(tls_mod), c.detach(),
                                   server_hostname="proxy.mwi.test")
        client_done = asyncio.ensure_future(client.handshake())
        first = await loop.sock_recv(s, 7)  # the proxy reads a little and classifies it
        while classify(first).kind != KIND_TLS:
            first += await loop.sock_recv(s, 7)
        server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
        await server.handshake(initial=first)
        await client_done
        assert server.server_name() == "proxy.mwi.test"
        await client.write(b"after")
        assert await server.read(10) == b"after"
        server.close()
        client.close()

    run(body)


def test_stream_misuse_is_refused(tls_mod: Any, pki: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        c, s = tcp_pair()
        server = tls_mod.TLSStream(loop, pki.server_ctx(tls_mod), s.detach())
        with pytest.raises(ValueError, match="handshake"):
            server.alpn()
        with pytest.raises(ValueError, match="handshake"):
            tls_mod.Relay(loop, server, c.fileno())
        server.close()
        with pytest.raises(ValueError, match="closed"):
            await server.read(1)
        c.close()

    run(body)
