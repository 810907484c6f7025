"""The agent's link port caps the connections that have not authenticated, in all and
per source address (the cluster port's `proxy.max_unauthenticated*`): a host holding
handshakes open cannot fill the port, other sources still get in, and a cluster proxy
that has authenticated no longer counts."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

from mwiproxy.config.cluster import ProxyConfig
from mwiproxy.dbagent.link import LinkServer
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.wire import agentlink

CLUSTER = "example.local"
HOST_CA = create_authority("host", CLUSTER)
USER_CA = create_authority("user", CLUSTER)
HOUR = dt.timedelta(hours=1)
WAIT = 10.0


def _agent(per_source: int, total: int) -> SimpleNamespace:
    key = generate_private_key()
    server = HOST_CA.sign_server("localhost", ["localhost", "127.0.0.1"], key.public_key(),
                                 HOUR)
    identity = SimpleNamespace(server_cert_pem=cert_pem(server), key_pem=private_key_pem(key),
                               cas={"user": USER_CA.cert_pem},
                               identity=SimpleNamespace(cluster=CLUSTER))
    return SimpleNamespace(
        identity=identity, engines={},
        service=SimpleNamespace(listen_addr="127.0.0.1:0", public_addr=""),
        config=SimpleNamespace(proxy=ProxyConfig(
            max_unauthenticated=total, max_unauthenticated_per_source=per_source)))


def _proxy_tls(tmp: Path) -> ssl.SSLContext:
    """A cluster proxy's client side of the link (the agent's certificate is not
    checked here: this test is about the agent's port)."""
    key = generate_private_key()
    cert = USER_CA.sign_identity(Identity(user="proxy", usage=(oids.USAGE_PROXY,),
                                          cluster=CLUSTER), key.public_key(), HOUR)
    (tmp / "proxy.crt").write_bytes(cert_pem(cert))
    (tmp / "proxy.key").write_bytes(private_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(tmp / "proxy.crt", tmp / "proxy.key")
    ctx.set_alpn_protocols([agentlink.ALPN])
    return ctx


def _stalled(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT,
                                    source_address=(source, 0))


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(WAIT)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def _until(pred) -> None:
    for _ in range(int(WAIT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_the_link_port_caps_unauthenticated_connections_per_source(tmp_path):
    async def main() -> None:
        link = LinkServer(_agent(per_source=2, total=4))  # type: ignore[arg-type]
        await link.start()
        port = link.address[1]
        admission = link.admission
        held = [_stalled(port, "127.0.0.2") for _ in range(2)]  # no ClientHello: stalled
        await _until(lambda: admission.pending == 2)
        extra = _stalled(port, "127.0.0.2")
        assert await asyncio.to_thread(_closed_by_server, extra)
        assert admission.refused == 1
        other = _stalled(port, "127.0.0.3")  # another source is not held back
        await _until(lambda: admission.pending == 3)
        # a cluster proxy's handshake (on the acceptor's worker): authenticated, it stops
        # counting and is the only one served (the link then waits for its hello)
        raw = await asyncio.to_thread(_stalled, port, "127.0.0.4")
        tls = await asyncio.to_thread(_proxy_tls(tmp_path).wrap_socket, raw)
        await _until(lambda: admission.pending == 3 and len(link._listener.conns) == 1)
        assert admission.refused == 1
        for s in [*held, extra, other, tls]:
            s.close()
        await _until(lambda: admission.pending == 0)
        await link.close()

    asyncio.run(main())


def _client_tls(tmp: Path, ca, usage: tuple[str, ...], name: str) -> ssl.SSLContext:
    key = generate_private_key()
    cert = ca.sign_identity(Identity(user=name, usage=usage, cluster=CLUSTER),
                            key.public_key(), HOUR)
    (tmp / f"{name}.crt").write_bytes(cert_pem(cert))
    (tmp / f"{name}.key").write_bytes(private_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    ctx.set_alpn_protocols([agentlink.ALPN])
    return ctx


def _handshake_then_closed(port: int, ctx: ssl.SSLContext) -> bool:
    """The TLS handshake completes (or not) and the agent closes the link unread."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        tls = ctx.wrap_socket(raw)
        return _closed_by_server(tls)  # type: ignore[arg-type]
    except (ssl.SSLError, ConnectionError):
        return True  # refused in the handshake
    finally:
        raw.close()


def test_the_link_handshakes_on_the_worker_and_still_refuses_non_proxies(tmp_path, caplog):
    """Attacks on the link port: a user of this cluster that is not a proxy gets past
    the handshake and is refused (logged); a certificate from another CA never gets past
    the handshake; after the user CA rotates (reload_tls), a proxy certificate from the
    old CA no longer gets in and one from the new CA does."""
    other_ca = create_authority("user", CLUSTER)

    async def main() -> None:
        agent = _agent(per_source=8, total=8)
        link = LinkServer(agent)  # type: ignore[arg-type]
        await link.start()
        port = link.address[1]
        not_proxy = _client_tls(tmp_path, USER_CA, (), "alice")
        assert await asyncio.to_thread(_handshake_then_closed, port, not_proxy)
        await _until(lambda: "is not a cluster proxy" in caplog.text)
        stranger = _client_tls(tmp_path, other_ca, (oids.USAGE_PROXY,), "mallory")
        assert await asyncio.to_thread(_handshake_then_closed, port, stranger)
        await _until(lambda: link._listener.stats().handshake_failed == 1)
        assert link._listener.stats().handed == 1  # only alice was handed over
        # the user CA rotates to other_ca: the acceptor takes the new context
        agent.identity.cas = {"user": other_ca.cert_pem}
        link.reload_tls()
        old = _proxy_tls(tmp_path)
        assert await asyncio.to_thread(_handshake_then_closed, port, old)
        await _until(lambda: link._listener.stats().handshake_failed == 2)
        raw = await asyncio.to_thread(_stalled, port, "127.0.0.5")
        tls = await asyncio.to_thread(stranger.wrap_socket, raw)  # a proxy of the new CA
        await _until(lambda: len(link._listener.conns) == 1)  # served: waits for its hello
        assert link._listener.stats().handed == 2
        tls.close()
        await link.close()

    with caplog.at_level("INFO"):
        asyncio.run(main())
