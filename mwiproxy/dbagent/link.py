"""The agent's side of the agent link (`wire/agentlink.py`): a mutual-TLS listener the
cluster proxies dial, one connection per session or cancel request.

Trust, checked on every connection:
- the peer is a cluster proxy: its certificate chains to the cluster's user CA (checked
  in the handshake) and carries usage `mwi:proxy` for this cluster;
- the client the proxy speaks for: its certificate (forwarded by the proxy) chains to the
  user CA, is valid now, and routes to a database this agent serves, as the user and
  database the session asks for. RBAC and locks are the proxy's job (it holds the roles
  and sees locks at once); the agent's check means a proxy cannot invent a client.
Then the engine signs in to the database and the native relay joins the two streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mwiproxy import _native
from mwiproxy.config.cluster import split_host_port
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.postgres import PostgresEngine, UpstreamRefused
from mwiproxy.identity import oids
from mwiproxy.identity.certs import Identity, identity_from_certificate
from mwiproxy.relay.listen import AcceptLoop
from mwiproxy.relay.pipe import Pipe
from mwiproxy.relay.streams import BufferedReader, set_nodelay
from mwiproxy.wire import agentlink
from mwiproxy.wire import postgres as pg

if TYPE_CHECKING:
    from mwiproxy.dbagent.agent import DatabaseAgent

log = logging.getLogger("mwiproxy.agent.link")

HANDSHAKE_TIMEOUT = 10.0
HELLO_TIMEOUT = 30.0


class Denied(Exception):
    pass


class _Collector:
    """A ByteStream that keeps what the engine says during startup."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def read(self, max_bytes: int = 0) -> bytes:
        return b""

    async def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


class LinkServer:
    def __init__(self, agent: DatabaseAgent) -> None:
        self._agent = agent
        self._ctx: _native.TLSContext | None = None
        self._acceptor: AcceptLoop | None = None
        self._pipes: set[Pipe] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._acceptor is not None
        return self._acceptor.address

    @property
    def public_addr(self) -> str:
        if self._agent.service.public_addr:
            return self._agent.service.public_addr
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def reload_tls(self) -> None:
        """New connections use the current identity's server certificate."""
        ident = self._agent.identity
        self._ctx = _native.TLSContext(True, ident.server_cert_pem, ident.key_pem,
                                       ident.cas["user"], verify=_native.VERIFY_REQUIRED,
                                       alpn=[agentlink.ALPN])

    async def start(self) -> None:
        self.reload_tls()
        host, port = split_host_port(self._agent.service.listen_addr)
        if host in ("0.0.0.0", "::") and not self._agent.service.public_addr:
            raise ValueError("db_service.listen_addr listens on every address: set "
                             "db_service.public_addr to the address proxies should dial")
        self._acceptor = AcceptLoop(host, port, self._serve)
        self._acceptor.start()

    async def close(self) -> None:
        for pipe in list(self._pipes):
            pipe.close("shutdown")
        if self._acceptor is not None:
            await self._acceptor.close(wait=5)

    async def _serve(self, sock: socket.socket, remote: str) -> None:
        assert self._ctx is not None
        set_nodelay(sock)
        stream = _native.TLSStream(asyncio.get_running_loop(), self._ctx, sock.detach())
        try:
            await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
            self._check_proxy(stream.peer_cert_der(), remote)
            reader = BufferedReader(stream)
            hello = await asyncio.wait_for(agentlink.read_hello(reader), HELLO_TIMEOUT)
            await self._handle(stream, reader, hello)
        except Denied as e:
            log.warning("refused a link connection from %s: %s", remote, e)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, agentlink.LinkError) as e:
            log.info("link connection from %s ended: %s", remote, e or "timeout")
        finally:
            stream.close()  # a no-op once the relay took it over

    def _check_proxy(self, der: bytes | None, remote: str) -> None:
        if not der:
            raise Denied("no client certificate")
        ident = identity_from_certificate(x509.load_der_x509_certificate(der))
        if oids.USAGE_PROXY not in ident.usage:
            raise Denied(f"{ident.user!r} is not a cluster proxy")
        cluster = self._agent.identity.identity.cluster
        if ident.cluster != cluster:
            raise Denied(f"the proxy belongs to cluster {ident.cluster!r}, not {cluster!r}")

    async def _handle(self, stream: _native.TLSStream, reader: BufferedReader,
                      hello: agentlink.Hello) -> None:
        engine = self._agent.engines.get(hello.service)
        try:
            if engine is None:
                raise Denied(f"database {hello.service!r} is not served by this agent")
            client = self._check_client(hello)
        except Denied as e:
            log.warning("refused %s session for %r: %s", hello.op, hello.service, e)
            await stream.write(agentlink.Reply(agentlink.DENIED, str(e)).encode())
            return
        if hello.op == agentlink.OP_CANCEL:
            assert hello.cancel is not None
            await self._cancel(stream, engine, pg.CancelKey(*hello.cancel), hello.db_user)
            return
        said = _Collector()
        try:
            upstream = await engine.start(hello.startup, hello.db_user, said, caller=client)
        except UpstreamRefused as e:
            await stream.write(agentlink.Reply(agentlink.REFUSED, str(e),
                                               answer=bytes(said.data)).encode())
            return
        except UpstreamError as e:
            await stream.write(agentlink.Reply(agentlink.ERROR, str(e)).encode())
            return
        key = upstream.cancel_key
        try:
            await stream.write(agentlink.Reply(
                agentlink.OK, cancel_key=(key.pid, key.secret) if key else None,
                answer=bytes(said.data)).encode())
            if early := reader.leftover():
                await upstream.stream.write(early)
            await self._relay(stream, upstream.stream, hello)
        finally:
            upstream.stream.close()

    async def _relay(self, proxy: _native.TLSStream, db: _native.TLSStream,
                     hello: agentlink.Hello) -> None:
        pipe = Pipe(proxy, db)
        self._pipes.add(pipe)
        try:
            stats = await pipe.run()
        finally:
            self._pipes.discard(pipe)
        log.info("session %d (%s as %s) ended: %s; %d bytes in, %d out", hello.session_id,
                 hello.service, hello.db_user, stats.reason, stats.bytes_a_to_b,
                 stats.bytes_b_to_a)

    async def _cancel(self, stream: _native.TLSStream, engine: PostgresEngine,
                      key: pg.CancelKey, db_user: str) -> None:
        try:
            await engine.cancel(key, db_user)
            reply = agentlink.Reply(agentlink.OK)
        except UpstreamError as e:
            reply = agentlink.Reply(agentlink.ERROR, str(e))
        with contextlib.suppress(OSError):
            await stream.write(reply.encode())

    def _check_client(self, hello: agentlink.Hello) -> Identity:
        """The forwarded client certificate: ours, valid now, for this request."""
        try:
            cert = x509.load_der_x509_certificate(hello.client_cert)
            user_ca = x509.load_pem_x509_certificate(self._agent.identity.cas["user"])
            cert.verify_directly_issued_by(user_ca)
            client = identity_from_certificate(cert)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise Denied(f"the client certificate is not from this cluster's user CA: "
                         f"{e or 'bad signature'}") from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise Denied(f"the client certificate of {client.user!r} is not valid now")
        route = client.route
        if route is None or route.service != hello.service:
            raise Denied(f"the client certificate of {client.user!r} does not route to "
                         f"{hello.service!r}")
        if route.username and route.username != hello.db_user:
            raise Denied(f"the certificate is for database user {route.username!r}, "
                         f"not {hello.db_user!r}")
        if hello.op == agentlink.OP_SESSION and route.database and (
                route.database != hello.db_name):
            raise Denied(f"the certificate is for database {route.database!r}, "
                         f"not {hello.db_name!r}")
        return client
