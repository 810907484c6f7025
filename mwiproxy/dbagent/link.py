"""The agent's side of the agent link (`wire/agentlink.py`): a mutual-TLS listener the
cluster proxies dial, one connection per session or cancel request.

Trust, checked on every connection:
- the peer is a cluster proxy: its certificate chains to the cluster's user CA (checked
  in the handshake) and carries usage `mwi:proxy` for this cluster;
- the client the proxy speaks for: its certificate (forwarded by the proxy) chains to the
  user CA, is valid now, and routes to a database this agent serves, as the user and
  database the session asks for. RBAC and locks are the proxy's job (it holds the roles
  and sees locks at once); the agent's check means a proxy cannot invent a client.
Then the engine signs in to the database (`dbagent/signin.py`: PostgreSQL, CockroachDB,
Redis, MySQL/MariaDB, MongoDB) and the native relay joins the two streams. A
new database-client certificate is signed by the cluster only for the session grant the
proxy sent in the hello (`auth/agent_grants.py`); a cancel needs no certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mwiproxy import _native
from mwiproxy.dbagent import signin
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.identity import oids
from mwiproxy.identity.certs import Identity, identity_from_certificate, identity_from_der
from mwiproxy.identity.pem import certificates
from mwiproxy.metrics.cluster import (
    LISTENER_AGENT_LINK,
    MODE_TUNNEL,
    RESULT_ERROR,
    RESULT_REFUSED,
    RESULT_SUCCESS,
)
from mwiproxy.relay.listen import Admission, Listener
from mwiproxy.relay.pipe import Pipe
from mwiproxy.relay.streams import BufferedReader
from mwiproxy.wire import agentlink
from mwiproxy.wire import postgres as pg
from mwiproxy.wire.addr import TCP, Address, split_host_port

if TYPE_CHECKING:
    from mwiproxy.dbagent.agent import DatabaseAgent

log = logging.getLogger("mwiproxy.agent.link")

HANDSHAKE_TIMEOUT = 10.0
HELLO_TIMEOUT = 30.0
CUT_GRACE = 5.0  # a cut session's relay flushes and closes within this
SHUTDOWN = "the database agent is shutting down"
PROTOCOL = "postgres"  # the metrics' protocol label of a hello for no database of ours


class Denied(Exception):
    pass


class LinkServer:
    def __init__(self, agent: DatabaseAgent) -> None:
        self._agent = agent
        self._ctx: _native.TLSContext | None = None
        self._listener: Listener | None = None
        self._pipes: dict[Pipe, bytes] = {}  # each with its farewell on a shutdown
        # only cluster proxies get past the handshake; the cluster port's caps on the
        # rest (proxy.max_unauthenticated*) bound what anyone else can hold open here
        # (counted by the acceptor until the handshake, which runs on its worker)
        limits = agent.config.proxy
        self.admission = Admission(limits.max_unauthenticated,
                                   limits.max_unauthenticated_per_source,
                                   where="on the agent link port")

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None
        return self._listener.address

    @property
    def public_addr(self) -> str:
        if self._agent.service.public_addr:
            return self._agent.service.public_addr
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def reload_tls(self) -> None:
        """New handshakes use the current identity's server certificate and user CAs
        (the acceptor takes the new context; handshakes under way keep theirs)."""
        ident = self._agent.identity
        self._ctx = _native.TLSContext(True, ident.server_cert_pem, ident.key_pem,
                                       ident.cas["user"], verify=_native.VERIFY_REQUIRED,
                                       alpn=[agentlink.ALPN])
        if self._listener is not None:
            self._listener.set_context(self._ctx)

    async def start(self) -> None:
        self.reload_tls()
        host, port = split_host_port(self._agent.service.listen_addr)
        if host in ("0.0.0.0", "::") and not self._agent.service.public_addr:
            raise ValueError("db_service.listen_addr listens on every address: set "
                             "db_service.public_addr to the address proxies should dial")
        assert self._ctx is not None
        self._listener = Listener(Address(TCP, host=host, port=port), self._serve,
                                  admission=self.admission, what="link connection",
                                  context=self._ctx, handshake_timeout=HANDSHAKE_TIMEOUT,
                                  on_handshake=lambda s: self._agent.metrics.handshake(
                                      LISTENER_AGENT_LINK, s))
        self._listener.start()

    async def stop_accepting(self) -> None:
        if self._listener is not None:
            await self._listener.stop_accepting()

    async def drain(self, timeout: float) -> tuple[int, int]:
        """Stop accepting; give the open link connections up to `timeout` s to end on
        their own, then cut the rest. (drained, cut): how many ended each way."""
        await self.stop_accepting()
        open_now = set(self._listener.conns) if self._listener is not None else set()
        if open_now:
            log.info("draining: %d open link session(s) have up to %gs", len(open_now),
                     timeout)
            await asyncio.wait(open_now, timeout=timeout)
        left = {task for task in open_now if not task.done()}
        if left:
            self._cut()
            await asyncio.wait(left, timeout=CUT_GRACE)
        return len(open_now) - len(left), len(left)

    def _cut(self) -> None:
        """End every relayed session now; the client hears why in its protocol
        (`signin.farewell`, passed on by the cluster proxy)."""
        for pipe, farewell in list(self._pipes.items()):
            pipe.close("shutdown", farewell)

    async def close(self) -> None:
        self._cut()
        if self._listener is not None:
            await self._listener.close(wait=CUT_GRACE)

    async def _serve(self, stream: _native.TLSStream, remote: str) -> None:
        """A connection the acceptor handshook on its worker (the user CA checked there):
        it must be a cluster proxy of this cluster before anything is read."""
        try:
            self._check_proxy(stream.peer_cert_der(), remote)
            reader = BufferedReader(stream)
            hello = await asyncio.wait_for(agentlink.read_hello(reader), HELLO_TIMEOUT)
            await self._handle(stream, reader, hello)
        except Denied as e:
            log.warning("refused a link connection from %s: %s", remote, e)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, agentlink.LinkError) as e:
            log.info("link connection from %s ended: %s", remote, str(e) or "timeout")
        finally:
            stream.close()  # a no-op once the relay took it over

    def _check_proxy(self, der: bytes | None, remote: str) -> None:
        if not der:
            raise Denied("no client certificate")
        ident = identity_from_der(der)
        if oids.USAGE_PROXY not in ident.usage:
            raise Denied(f"{ident.user!r} is not a cluster proxy")
        cluster = self._agent.identity.identity.cluster
        if ident.cluster != cluster:
            raise Denied(f"the proxy belongs to cluster {ident.cluster!r}, not {cluster!r}")

    async def _handle(self, stream: _native.TLSStream, reader: BufferedReader,
                      hello: agentlink.Hello) -> None:
        engine = self._agent.engines.get(hello.service)
        metrics, started = self._agent.metrics, time.monotonic()
        service = hello.service if engine is not None else ""
        protocol = signin.label(engine) if engine is not None else PROTOCOL
        try:
            if engine is None:
                raise Denied(f"database {hello.service!r} is not served by this agent")
            client = self._check_client(hello, engine)
        except Denied as e:
            metrics.refusal(protocol,
                            "unknown_service" if engine is None else "access_denied")
            if hello.op == agentlink.OP_SESSION:
                metrics.connection(service, protocol, MODE_TUNNEL, RESULT_REFUSED)
            log.warning("refused %s session for %r: %s", hello.op, hello.service, e)
            await stream.write(agentlink.Reply(agentlink.DENIED, str(e)).encode())
            return
        if hello.op == agentlink.OP_CANCEL:
            assert hello.cancel is not None and isinstance(engine, PostgresEngine)
            await self._cancel(stream, engine, pg.CancelKey(*hello.cancel), hello.db_user)
            return
        try:
            opened = await signin.sign_in(engine, hello, client)
        except (signin.Refused, UpstreamError) as e:
            refused = isinstance(e, signin.Refused)
            metrics.connection(service, protocol, MODE_TUNNEL,
                               RESULT_REFUSED if refused else RESULT_ERROR)
            await stream.write(agentlink.Reply(
                agentlink.REFUSED if refused else agentlink.ERROR, str(e),
                answer=e.answer if isinstance(e, signin.Refused) else b"").encode())
            return
        metrics.connection(service, protocol, MODE_TUNNEL, RESULT_SUCCESS)
        try:
            await stream.write(agentlink.Reply(
                agentlink.OK, cancel_key=opened.cancel_key, answer=opened.answer
            ).encode() + opened.leftover)
            metrics.first_byte(service, protocol, MODE_TUNNEL, time.monotonic() - started)
            if early := reader.leftover():
                await opened.stream.write(early)
            await self._relay(stream, opened.stream, hello, engine)
        finally:
            opened.stream.close()

    async def _relay(self, proxy: _native.TLSStream, db: _native.TLSStream,
                     hello: agentlink.Hello, engine: signin.Engine) -> None:
        metrics, started = self._agent.metrics, time.monotonic()
        protocol = signin.label(engine)
        pipe = Pipe(proxy, db,
                    count_as=metrics.bytes_key(hello.service, protocol, MODE_TUNNEL))
        self._pipes[pipe] = signin.farewell(engine, SHUTDOWN)
        metrics.opened(hello.service, protocol, MODE_TUNNEL)
        try:
            stats = await pipe.run()
        finally:
            self._pipes.pop(pipe, None)
            metrics.closed(hello.service, protocol, MODE_TUNNEL,
                           pipe.stats.reason or "shutdown", time.monotonic() - started)
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

    def _check_client(self, hello: agentlink.Hello, engine: signin.Engine) -> Identity:
        """The forwarded client certificate: ours, valid now, for this request."""
        try:
            cert = x509.load_der_x509_certificate(hello.client_cert)
            _verify_issued_by_any(cert, self._agent.identity.cas["user"])
            client = identity_from_certificate(cert)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise Denied(f"the client certificate is not from this cluster's user CA: "
                         f"{str(e) or 'bad signature'}") from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise Denied(f"the client certificate of {client.user!r} is not valid now")
        route = client.route
        if route is None or route.service != hello.service:
            raise Denied(f"the client certificate of {client.user!r} does not route to "
                         f"{hello.service!r}")
        if route.protocol not in signin.protocols(engine):
            raise Denied(f"{hello.service!r} is a {engine.db.protocol} database: a "
                         f"{route.protocol} route to it is refused")
        if hello.op == agentlink.OP_CANCEL and not isinstance(engine, PostgresEngine):
            raise Denied(f"{hello.service!r} is a {engine.db.protocol} database: it has "
                         "no cancel requests")
        if route.username and route.username != hello.db_user:
            raise Denied(f"the certificate is for database user {route.username!r}, "
                         f"not {hello.db_user!r}")
        if hello.op == agentlink.OP_SESSION and route.database and (
                route.database != hello.db_name):
            raise Denied(f"the certificate is for database {route.database!r}, "
                         f"not {hello.db_name!r}")
        return client


def _verify_issued_by_any(cert: x509.Certificate, ca_pems: bytes) -> None:
    """Issued by one of the trusted user CAs (two while the user CA rotates)."""
    error: Exception = ValueError("no user CA is trusted")
    for pem in certificates(ca_pems):
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pem))
            return
        except (ValueError, TypeError, InvalidSignature) as e:
            error = e
    raise error
