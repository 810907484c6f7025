"""The cluster proxy's PostgreSQL front end (ALPN `teleport-postgres`).

Tunnel mode: the identity comes from the outer TLS; an SSLRequest inside is declined.
Non-tunnel mode: the outer TLS carries no client certificate; the client's own TLS
(SSLRequest → 'S') is terminated here with the proxy's certificate, and the identity is
taken from the client certificate of that inner handshake.

Then: startup → access check → engine → relay, with audit events at each end, or a
CancelRequest forwarded to the database of the session that owns the key. The setup
reads and writes the streams directly; the relay (`relay/pipe.py`) then takes both over
— natively in both modes (the client's inner TLS runs on the native core over the outer
one, `TLSStream.wrap_inner`), `-ping` framed or not (in non-tunnel `-ping` the frames sit
between the two TLS layers: `wrap_inner(framing=)`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping

from mwiproxy import _native
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.postgres import (
    PROTOCOLS,
    EarlyDial,
    PostgresEngine,
    Upstream,
    UpstreamRefused,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.metrics.cluster import (
    RESULT_ERROR,
    RESULT_REFUSED,
    NoopProxyMetrics,
)
from mwiproxy.proxy.access import Refusal, check_certificate, check_policy_off_loop
from mwiproxy.proxy.dbsession import Conn, DbFrontend, InnerTLSError, tell_client
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import accepted_at
from mwiproxy.proxy.queryaudit import QueryAudit, QueryAuditPolicy
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.pipe import Audit
from mwiproxy.relay.streams import BufferedReader, ByteStream
from mwiproxy.wire import postgres as pg

log = logging.getLogger("mwiproxy.proxy.postgres")
PROTOCOL = "postgres"  # the metrics' protocol label (the ALPN's; CockroachDB included)

# from the hand-off to the startup message (with the inner TLS handshake of non-tunnel
# mode): an unauthenticated client must not hold a connection longer (proxy.
# first_message_timeout)
STARTUP_TIMEOUT = 10.0
MAX_NEGOTIATIONS = 3
REASON_MALFORMED = "malformed_packet"  # a session closed for a malformed message
MALFORMED_PREFIX = "malformed message: "


_ENDED = (pg.ProtocolError, InnerTLSError, ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError)


class PostgresFrontend(DbFrontend):
    protocol = PROTOCOL

    def __init__(self, auth: AuthService, engines: EngineDirectory,
                 sessions: SessionRegistry, inner_tls: Callable[[], _native.TLSContext],
                 ping_interval: float | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT,
                 metrics: NoopProxyMetrics | None = None, query_audit: bool = True,
                 query_wait: bool = False, param_key: bytes | None = None) -> None:
        super().__init__(auth, sessions, inner_tls, ping_interval, metrics)
        self._startup_timeout = startup_timeout
        self._query_audit_on = query_audit  # audit.queries
        self._query_wait = query_wait  # audit.query_backpressure: wait
        self._param_key = param_key  # the cluster's key for parameter digests
        self._engines = engines

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        conn = Conn(stream, BufferedReader(stream), caller, remote,
                     accepted_at=accepted_at())
        try:
            first = await asyncio.wait_for(self._negotiate(conn), self._startup_timeout)
            if first.is_cancel:
                await self._cancel(conn, pg.parse_cancel(first.raw))
            else:
                await self._session(conn, first.raw)
        except Refusal as r:
            await self._refuse(conn, r)
        except _ENDED as e:
            if isinstance(e, TimeoutError):  # held the connection, sent no startup
                self._metrics.refusal(PROTOCOL, "timeout")
            log.info("postgres connection from %s ended before startup: %s", remote, e)
        finally:
            conn.stream.close()  # a no-op once a relay took it over

    # -- before the startup message ----------------------------------------------------

    async def _negotiate(self, conn: Conn) -> pg.FirstPacket:
        for _ in range(MAX_NEGOTIATIONS):
            first = await pg.read_first_packet(conn.reader)
            if first.is_startup or first.is_cancel:
                return first
            if first.is_ssl_request and conn.caller is None and not conn.inner_tls:
                await self._accept_inner_tls(conn)
            elif first.is_ssl_request or first.is_gssenc_request:
                await conn.stream.write(pg.SSL_NO)
            else:
                raise pg.ProtocolError(f"unknown startup request code {first.code}")
        raise pg.ProtocolError("too many encryption requests")

    async def _accept_inner_tls(self, conn: Conn) -> None:
        await conn.stream.write(pg.SSL_YES)
        await self.accept_inner_tls(conn, conn.reader.leftover())

    # -- refusals ----------------------------------------------------------------------

    async def _refuse(self, conn: Conn, refusal: Refusal,
                      params: Mapping[str, str] | None = None) -> None:
        route = conn.caller.route if conn.caller else None
        service = route.service if route and route.service in self._engines else ""
        params = params or {}
        self.refused(conn, refusal, service, params.get("user", ""),
                     params.get("database", ""))
        await tell_client(conn.stream, pg.error_response(refusal.message))

    # -- a session ---------------------------------------------------------------------

    async def _session(self, conn: Conn, startup: bytes) -> None:
        params = pg.parse_startup(startup)
        db_user = params.get("user", "")
        db_name = params.get("database") or db_user
        early: EarlyDial | None = None
        try:
            asked = check_certificate(conn.caller, db_user=db_user, db_name=db_name,
                                      protocols=PROTOCOLS, served=self._engines)
            assert conn.caller is not None
            early = await self._dial_early(asked.service)
            grant = await check_policy_off_loop(self._auth, conn.caller, asked)
        except Refusal as r:
            if early is not None:
                early.cancel()  # the database saw a TCP connection and an SSLRequest
            await self._refuse(conn, r, {"user": db_user, "database": db_name})
            return
        try:
            with self.registered(self.session_for(conn, grant, db_user, db_name)) as session:
                await self._run(conn, session, startup, early, grant.query_audit)
        finally:
            if early is not None:
                early.cancel()  # a no-op once the engine took its socket

    async def _dial_early(self, service: str) -> EarlyDial | None:
        """An in-process engine starts dialing while the policy check runs (the
        certificate was verified and checked by now); an agent-served database is
        dialed only after it, as a session grant goes with that dial."""
        engine = self._engines.local(service)
        if not isinstance(engine, PostgresEngine):
            return None
        early = engine.dial_early()
        await early.head_start()
        return early

    async def _run(self, conn: Conn, session: Session, startup: bytes,
                   early: EarlyDial | None, policy: QueryAuditPolicy) -> None:
        started = time.monotonic()
        try:
            engine = self._engines.serving(session.service)
            start: Callable[..., Awaitable[Upstream]] = engine.start
            if isinstance(engine, PostgresEngine):
                start = functools.partial(engine.start, early=early)
            upstream = await start(
                startup, session.db_user, conn.stream, caller=session.identity,
                db_name=session.db_name, remote=session.remote,
                session_id=session.session_id)
        except (UpstreamError, UpstreamRefused) as e:
            self._metrics.connection(session.service, PROTOCOL, session.mode,
                                     RESULT_ERROR if isinstance(e, UpstreamError)
                                     else RESULT_REFUSED)
            self.audit_start(session, error=str(e))
            if isinstance(e, UpstreamError):
                await conn.stream.write(pg.error_response(str(e), pg.CONNECTION_FAILURE))
            return
        except asyncio.CancelledError:  # only a shutdown cancels a connection's task
            self._metrics.connection(session.service, PROTOCOL, session.mode, RESULT_ERROR)
            self.audit_start(session, error="the cluster proxy shut down while connecting")
            raise
        # the engine sent the database's answer (AuthenticationOk … ReadyForQuery) on
        self.connected(session)
        if upstream.cancel_key is not None:
            self._sessions.set_cancel_key(session, upstream.cancel_key)
        try:
            await self._relay(conn, session, upstream, started, policy)
        finally:
            upstream.stream.close()  # a no-op once the relay took it over

    async def _relay(self, conn: Conn, session: Session, upstream: Upstream,
                     started: float, policy: QueryAuditPolicy) -> None:
        if early := conn.reader.leftover():  # sent before the answer: still the db's
            await upstream.stream.write(early)
        queries = self._query_audit(session, policy)
        stats = None
        try:
            stats = await self.relay(
                conn, session, upstream.stream, started, _farewell,
                audit=None if queries is None else Audit(PROTOCOL, queries.on_records,
                                                          queries.wait))
        finally:
            if queries is not None:
                queries.ended(stats.audit_dropped if stats is not None else 0)

    def _query_audit(self, session: Session, policy: QueryAuditPolicy) -> QueryAudit | None:
        """The session's query audit (None: its roles turned it off). The client's
        stream is parsed after the startup, from its first regular message (the
        tunnel's, or the client's own TLS terminated here: the plaintext either way)."""
        if not (self._query_audit_on and policy.enabled):
            return None
        who = {**self.who(session), "session_id": session.session_id}
        queries = QueryAudit(self._auth.audit.emit, who, policy, wait=self._query_wait,
                             key=self._param_key,
                             on_dropped=lambda n: self._metrics.query_audit_dropped(
                                 PROTOCOL, n))
        queries.on_malformed = lambda reason: session.end(
            REASON_MALFORMED, f"{MALFORMED_PREFIX}{reason}")
        return queries

    # -- cancel ------------------------------------------------------------------------

    async def _cancel(self, conn: Conn, key: pg.CancelKey) -> None:
        session = self._sessions.by_cancel_key(key)
        if conn.caller is None or session is None or not _same_owner(session, conn.caller):
            log.info("CancelRequest from %s matches no session of its identity", conn.remote)
            return
        try:
            engine = self._engines.serving(session.service)
            await engine.cancel(key, session.db_user, caller=conn.caller)
        except UpstreamError as e:
            log.info("cancel for session %d failed: %s", session.session_id, e)
            return
        log.info("cancelled the running query of session %d", session.session_id)


def _farewell(message: str) -> bytes:
    """What a cut tells the client: a protocol violation, or the administrator's cut."""
    code = pg.PROTOCOL_VIOLATION if message.startswith(MALFORMED_PREFIX) else pg.ADMIN_SHUTDOWN
    return pg.error_response(message, code)


def _same_owner(session: Session, caller: Identity) -> bool:
    owner = session.identity
    if owner.bot_name or caller.bot_name:
        return owner.bot_name == caller.bot_name
    return owner.user == caller.user
