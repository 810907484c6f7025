"""The cluster listener's native TLS path: identity from the client certificate, and a
refused client certificate answered with a TLS alert rather than a bare close; every
refusal at the outer TLS reported for the audit log, a flood of them bounded."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mwiproxy.auth import audit
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.proxy.listener import Limits, ProxyListener, ServerTLS
from mwiproxy.proxy.refusals import RefusalAudit, TLSRefusal
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


# -- refusals at the outer TLS: reported to the injected callback -------------------


def _pem_files(tmp: str, cert: x509.Certificate, key: object) -> tuple[str, str]:
    with open(f"{tmp}/r.crt", "wb") as f:
        f.write(cert_pem(cert))
    with open(f"{tmp}/r.key", "wb") as f:
        f.write(private_key_pem(key))  # type: ignore[arg-type]
    return f"{tmp}/r.crt", f"{tmp}/r.key"


def _cert(case: str) -> tuple[x509.Certificate, object]:
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x")
    if case == "expired":
        return USER_CA.sign_identity(ident, key.public_key(), dt.timedelta(seconds=-30)), key
    if case == "foreign":
        foreign = create_authority("user", "other")
        return foreign.sign_identity(ident, key.public_key(), dt.timedelta(minutes=5)), key
    # "no-identity": signed by the right CA, but its subject names no user
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
            .issuer_name(USER_CA.cert.subject).public_key(key.public_key())
            .serial_number(0xC0FFEE).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(minutes=5))
            .sign(USER_CA.key, hashes.SHA256()))
    return cert, key


def _talk(port: int, proto: str, tmp: str, case: str) -> bytes | BaseException:
    """A blocking stdlib client: TLS 1.3 with the certificate of `case`, then one echo.
    Case "distrust": no certificate, and the client does not trust the proxy."""
    trust = create_authority("host", "c") if case == "distrust" else HOST_CA
    ctx = ssl.create_default_context(cadata=trust.cert_pem.decode())
    if case != "distrust":
        ctx.load_cert_chain(*_pem_files(tmp, *_cert(case)))
    ctx.set_alpn_protocols([proto])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"hello")  # TLS 1.3: the server checks our certificate after this
            return tls.recv(100)
    except (ssl.SSLError, OSError) as e:
        return e


async def _echo_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        _caller: Identity | None, _remote: str) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def _refusing_listener(seen: list[Identity | None], refused: list[TLSRefusal],
                             limits: Limits | None = None) -> ProxyListener:
    listener = ProxyListener("127.0.0.1", 0, _server_tls, on_refusal=refused.append,
                             limits=limits)
    listener.route_tls(alpn.POSTGRES, _serve(seen))
    listener.route(alpn.AUTH, _echo_streams)
    await listener.start()
    return listener


async def _reported(refused: list[TLSRefusal]) -> None:
    """The server side may finish after the client saw the connection end."""
    for _ in range(100):
        if refused:
            return
        await asyncio.sleep(0.02)


REASONS = {"expired": "certificate verify failed: certificate has expired",
           "foreign": "certificate verify failed: ",
           "distrust": "alert unknown ca",
           "no-identity": "the client certificate carries no identity: "}


@pytest.mark.parametrize("proto", [alpn.POSTGRES, alpn.AUTH])  # native path, stdlib path
@pytest.mark.parametrize("case", list(REASONS))
def test_refused_handshakes_and_identityless_certificates_are_reported(proto, case, tmp_path):
    async def main() -> tuple[list[Identity | None], list[TLSRefusal], object]:
        seen: list[Identity | None] = []
        refused: list[TLSRefusal] = []
        listener = await _refusing_listener(seen, refused)
        got = await asyncio.to_thread(_talk, listener.address[1], proto, str(tmp_path), case)
        await _reported(refused)
        await listener.close()
        return seen, refused, got

    seen, refused, got = asyncio.run(main())
    assert not seen and got != b"hello", got
    assert len(refused) == 1, refused
    r = refused[0]
    assert REASONS[case] in r.reason, r
    assert r.remote.startswith("127.0.0.1:") and r.alpn_offered == (proto,)
    fields = r.fields()
    if case == "no-identity":
        assert r.alpn_selected == proto
        assert fields["cert_serial"] == "c0ffee" and fields["cert_subject"] == "O=x"
        assert fields["cert_issuer"] == USER_CA.cert.subject.rfc4514_string()
    else:  # a failed verification leaves no certificate in either TLS build
        assert "cert_serial" not in fields


def _client_hello(proto: str) -> bytes:
    ctx = ssl.create_default_context(cadata=HOST_CA.cert_pem.decode())
    ctx.set_alpn_protocols([proto])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _mangled_hello(proto: str) -> bytes:
    """A ClientHello whose cipher suites are all unknown values (lengths intact)."""
    hello = _client_hello(proto)
    at = 44 + hello[43]  # record and handshake headers, version, random, session id
    n = int.from_bytes(hello[at:at + 2], "big")
    return hello[:at + 2] + b"\x0a\x0a" * (n // 2) + hello[at + 2 + n:]


@pytest.mark.parametrize("proto", [alpn.POSTGRES, alpn.AUTH])
def test_a_mangled_client_hello_is_reported(proto):
    def send(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_mangled_hello(proto))
            while s.recv(65536):  # the alert, then the close
                pass

    async def main() -> list[TLSRefusal]:
        refused: list[TLSRefusal] = []
        listener = await _refusing_listener([], refused)
        await asyncio.to_thread(send, listener.address[1])
        await _reported(refused)
        await listener.close()
        return refused

    refused = asyncio.run(main())
    assert [(r.reason, r.alpn_offered) for r in refused] == [("no shared cipher", (proto,))]


@pytest.mark.parametrize("proto", [alpn.POSTGRES, alpn.AUTH])
def test_silence_stalls_and_hangups_are_not_refusals(proto):

    def hang_up(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_client_hello(proto))

    def stall(port: int, hello: bool) -> bytes:
        """Send a ClientHello (or nothing) and wait for the server to give up."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if hello:
                s.sendall(_client_hello(proto))
            while data := s.recv(65536):  # the ServerHello, then the close
                assert hello, data
            return data

    async def main() -> list[TLSRefusal]:
        refused: list[TLSRefusal] = []
        listener = await _refusing_listener([], refused, Limits(handshake_timeout=0.3))
        port = listener.address[1]
        await asyncio.to_thread(hang_up, port)
        await asyncio.to_thread(stall, port, False)
        await asyncio.to_thread(stall, port, True)  # ends after the hang-up was handled
        await listener.close()
        return refused

    assert asyncio.run(main()) == []


# -- the audit of refusals: bounded per remote and for the whole port ---------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recorder() -> tuple[list[tuple[str, dict[str, object]]], Callable[..., None]]:
    events: list[tuple[str, dict[str, object]]] = []
    return events, lambda type, **fields: events.append((type, fields))


def test_a_flood_of_refusals_is_summarised_not_written_one_by_one():
    events, emit = _recorder()
    clock = _Clock()
    audit_refusal = RefusalAudit(emit, clock=clock, per_remote=(1.0, 20), total=(5.0, 100),
                                 interval=10.0)
    for i in range(500):
        audit_refusal(TLSRefusal(f"203.0.113.7:{1000 + i}", "certificate verify failed: x"))
    audit_refusal(TLSRefusal("198.51.100.1:5", "unknown ca"))  # another remote still heard
    assert [f["remote"] for _, f in events].count("198.51.100.1:5") == 1
    assert len(events) == 21 and all(t == audit.TLS_REFUSED for t, _ in events)
    clock.now += 10.0  # one interval later: one summary, then the bucket refilled a little
    audit_refusal(TLSRefusal("203.0.113.7:9", "certificate verify failed: x"))
    summary = [f for _, f in events if "suppressed" in f]
    assert len(summary) == 1 and summary[0]["suppressed"] == 480, summary
    assert summary[0]["remotes"] == {"203.0.113.7": 480}
    assert events[-1][1]["remote"] == "203.0.113.7:9"
    audit_refusal.flush()
    assert len(events) == 23  # nothing more was held back: no empty summary


def test_many_remotes_together_are_bounded_by_the_port_bucket():
    events, emit = _recorder()
    audit_refusal = RefusalAudit(emit, clock=_Clock(), per_remote=(1.0, 20),
                                 total=(5.0, 100), interval=10.0)
    for i in range(1000):
        audit_refusal(TLSRefusal(f"10.0.{i // 250}.{i % 250}:1", "unknown ca"))
    audit_refusal.flush()
    assert len(events) == 101
    summary = events[-1][1]
    assert summary["suppressed"] == 900
    assert isinstance(summary["remotes"], dict) and len(summary["remotes"]) == 10


def test_the_summary_is_written_on_the_event_loop_when_the_flood_stops():
    events, emit = _recorder()

    async def main() -> None:
        audit_refusal = RefusalAudit(emit, per_remote=(1.0, 3), interval=0.05)
        for _ in range(5):
            audit_refusal(TLSRefusal("192.0.2.1:1", "unknown ca"))
        for _ in range(100):
            if len(events) == 4:
                break
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert [f.get("suppressed") for _, f in events] == [None, None, None, 2]


def _server_cert(port: int) -> bytes:
    """The certificate the port presents to a database-ALPN client (no client cert)."""
    ctx = ssl.create_default_context(cadata=HOST_CA.cert_pem.decode())
    ctx.set_alpn_protocols([alpn.POSTGRES])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None and tls.selected_alpn_protocol() == alpn.POSTGRES
        return der


def test_a_reload_serves_new_handshakes_and_a_drain_keeps_open_ones():
    """reload_tls: the acceptor handshakes new connections with the new certificate;
    stop_accepting: no new connections, a connection already handed over goes on."""
    tls = [_server_tls()]

    async def main() -> tuple[list[bytes], bytes, bool]:
        held: asyncio.Queue[ByteStream] = asyncio.Queue()
        release = asyncio.Event()

        async def serve(stream: ByteStream, _caller: Identity | None, _remote: str) -> None:
            await held.put(stream)
            await release.wait()
            await stream.write(b"still here")

        listener = ProxyListener("127.0.0.1", 0, lambda: tls[-1])
        listener.route_tls(alpn.POSTGRES, serve)
        await listener.start()
        port = listener.address[1]
        certs = [await asyncio.to_thread(_server_cert, port)]
        tls.append(_server_tls())
        listener.reload_tls()
        certs.append(await asyncio.to_thread(_server_cert, port))
        ctx = ssl.create_default_context(cadata=HOST_CA.cert_pem.decode())
        ctx.set_alpn_protocols([alpn.POSTGRES])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        open_one = await asyncio.to_thread(ctx.wrap_socket, raw, server_hostname="localhost")
        for _ in range(3):  # the two certificate probes, then this one
            await asyncio.wait_for(held.get(), 10)
        await listener.stop_accepting()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        release.set()
        got = await asyncio.to_thread(open_one.recv, 100)
        open_one.close()
        await listener.close()
        return certs, got, refused

    certs, got, refused = asyncio.run(main())
    want = [x509.load_pem_x509_certificate(t.cert_pem).public_bytes(
        serialization.Encoding.DER) for t in tls]
    assert certs == want and certs[0] != certs[1]
    assert refused and got == b"still here"
