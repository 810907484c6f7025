"""The cluster proxy's Redis front end (ALPN `teleport-redis` and `teleport-redis-ping`).

Tunnel mode: the identity comes from the outer TLS, and the client's plaintext RESP
follows. Non-tunnel mode: the outer TLS carries no client certificate; the client's own
TLS (`redis-cli --tls`) starts at its first byte, is terminated here with the proxy's
certificate (the one PostgreSQL's non-tunnel clients see), and the identity is that
handshake's client certificate.

Then: access check (the route's user, `default` when it names none; Redis has no
database names) → the engine signs in to Redis as that user (in this process, or in a
database agent serving it: `engines/remote.py` with no startup message) → the native
relay, which
holds the few commands that could switch the user (AUTH, HELLO, RESET, and every inline
command, whose quoting is parsed here as redis-server parses it) for `_Inspector` to
decide. A refused command ends the session with `-ERR <why>`. The query audit records
every command natively (csrc/mwi_rdsaudit.h → proxy/rdsqueryaudit.py). Refusals before the relay
answer each of the client's first commands with `-ERR <why>` (redis-py swallows the
errors of its opening `CLIENT SETINFO` commands), bounded in count, size and time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from mwiproxy import _native
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.postgres import UpstreamRefused as AgentRefused
from mwiproxy.engines.redis import DEFAULT_USER, PROTOCOL, RedisEngine, UpstreamRefused
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.metrics.cluster import RESULT_ERROR, RESULT_REFUSED, NoopProxyMetrics
from mwiproxy.proxy.access import Refusal, check_certificate, check_policy_off_loop
from mwiproxy.proxy.dbsession import Conn, DbFrontend, InnerTLSError
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import accepted_at
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.proxy.rdsqueryaudit import RedisQueryAudit
from mwiproxy.proxy.redisinspect import command_inspector
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.pipe import Audit
from mwiproxy.relay.streams import BufferedReader, ByteStream
from mwiproxy.wire import redis as resp

log = logging.getLogger("mwiproxy.proxy.redis")

# an unauthenticated client's inner TLS handshake must end within this (proxy.
# first_message_timeout)
SETUP_TIMEOUT = 10.0
# a refused client gets this long, and this many answers, before the proxy hangs up
REFUSAL_TIMEOUT = 15.0
MAX_ANSWERS = 16
READ_CAP = 64 * 1024  # the largest command read from a client that is refused anyway
TLS_HANDSHAKE = 0x16  # a TLS record's first byte: the client's own TLS (non-tunnel)

_ENDED = (resp.ProtocolError, InnerTLSError, ssl.SSLError, OSError, TimeoutError,
          asyncio.IncompleteReadError)


async def answer_errors(stream: ByteStream, message: str, buffered: bytes = b"") -> None:
    """Answer each command the client sends (at most MAX_ANSWERS, each of at most
    READ_CAP bytes) with `-ERR <message>`, until it hangs up."""
    reply = resp.error_reply(f"ERR {message}")
    buf, answered = buffered, 0
    while answered < MAX_ANSWERS:
        command = resp.parse_command(buf, READ_CAP)
        if command is None:
            data = await stream.read(READ_CAP)
            if not data:
                return
            buf += data
            continue
        buf = buf[command.size:]
        if command.args:  # an empty line or `*0` asks nothing
            await stream.write(reply)
            answered += 1


class RedisFrontend(DbFrontend):
    protocol = PROTOCOL

    def __init__(self, auth: AuthService, engines: EngineDirectory[RedisEngine],
                 sessions: SessionRegistry, inner_tls: Callable[[], _native.TLSContext],
                 ping_interval: float | None = None, setup_timeout: float = SETUP_TIMEOUT,
                 metrics: NoopProxyMetrics | None = None, query_audit: bool = True,
                 query_wait: bool = False, param_key: bytes | None = None) -> None:
        super().__init__(auth, sessions, inner_tls, ping_interval, metrics)
        self._engines = engines
        self._setup_timeout = setup_timeout
        self._query_audit_on = query_audit  # audit.queries
        self._query_wait = query_wait  # audit.query_backpressure: wait
        self._param_key = param_key  # the cluster's key for argument digests

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        conn = Conn(stream, BufferedReader(stream), caller, remote, accepted_at=accepted_at())
        try:
            buffered = b""
            if caller is None:
                try:
                    buffered = await asyncio.wait_for(self._maybe_inner_tls(conn),
                                                      self._setup_timeout)
                except Refusal as r:  # a client certificate without an identity
                    await self._refuse(conn, r)
                    return
            await self._session(conn, buffered)
        except _ENDED as e:
            if isinstance(e, TimeoutError):
                self._metrics.refusal(PROTOCOL, "timeout")
            log.info("redis connection from %s ended before its session: %s", remote,
                     e or type(e).__name__)
        finally:
            conn.stream.close()  # a no-op once a relay took it over

    async def _maybe_inner_tls(self, conn: Conn) -> bytes:
        """No identity on the outer TLS: the client's own TLS must start here. What a
        plaintext client sent instead is returned, to be answered with the refusal."""
        first = await conn.reader.read_some()
        if first[:1] != bytes([TLS_HANDSHAKE]):
            return first
        await self.accept_inner_tls(conn, first)
        return b""

    async def _refuse(self, conn: Conn, refusal: Refusal, db_user: str = "",
                      buffered: bytes = b"") -> None:
        route = conn.caller.route if conn.caller else None
        service = route.service if route and route.service in self._engines else ""
        self.refused(conn, refusal, service, db_user)
        await self._answer(conn, refusal.message, buffered)

    async def _answer(self, conn: Conn, message: str, buffered: bytes = b"") -> None:
        try:
            await asyncio.wait_for(answer_errors(conn.stream, message, buffered),
                                   REFUSAL_TIMEOUT)
        except _ENDED as e:
            log.info("redis connection from %s ended during its refusal: %s", conn.remote,
                     e or type(e).__name__)

    # -- a session ---------------------------------------------------------------------

    async def _session(self, conn: Conn, buffered: bytes) -> None:
        route = conn.caller.route if conn.caller else None
        db_user = (route.username if route else "") or DEFAULT_USER
        try:
            asked = check_certificate(conn.caller, db_user=db_user,
                                      db_name=route.database if route else "",
                                      protocols=(PROTOCOL,), served=self._engines)
            assert conn.caller is not None
            # Redis has no database names: a route's database is not checked
            grant = await check_policy_off_loop(
                self._auth, conn.caller, DatabaseRoute(asked.service, PROTOCOL, db_user, ""))
        except Refusal as r:
            await self._refuse(conn, r, db_user, buffered)
            return
        with self.registered(self.session_for(conn, grant, db_user, "")) as session:
            await self._run(conn, session, grant.query_audit)

    async def _run(self, conn: Conn, session: Session, policy: QueryAuditPolicy) -> None:
        started = time.monotonic()
        try:
            upstream = await self._start(conn, session)
        except (UpstreamError, UpstreamRefused, AgentRefused) as e:
            self._metrics.connection(session.service, PROTOCOL, session.mode,
                                     RESULT_ERROR if isinstance(e, UpstreamError)
                                     else RESULT_REFUSED)
            self.audit_start(session, error=str(e))
            await self._answer(conn, str(e))
            return
        except asyncio.CancelledError:  # only a shutdown cancels a connection's task
            self._metrics.connection(session.service, PROTOCOL, session.mode, RESULT_ERROR)
            self.audit_start(session, error="the cluster proxy shut down while connecting")
            raise
        self.connected(session)
        queries = None
        if self._query_audit_on and policy.enabled:
            queries = RedisQueryAudit(
                self._auth.audit.emit, {**self.who(session), "session_id": session.session_id},
                policy, wait=self._query_wait, key=self._param_key,
                on_dropped=lambda n: self._metrics.query_audit_dropped(PROTOCOL, n),
                emit_many=self._auth.audit.emit_many)
        stats = None
        try:
            stats = await self.relay(
                conn, session, upstream, started, _farewell,
                inspect=command_inspector(self._auth.audit, session),
                audit=None if queries is None else Audit(PROTOCOL, queries.on_records,
                                                          queries.wait))
        finally:
            upstream.close()  # a no-op once the relay took it over
            if queries is not None:
                queries.ended(stats.audit_dropped if stats is not None else 0)


    async def _start(self, conn: Conn, session: Session) -> ByteStream:
        """Redis signed in as the session's user: by this process's engine, or through
        one of the agents serving the database (which signs in the same way)."""
        engine = self._engines.serving(session.service)
        if isinstance(engine, RedisEngine):
            return await engine.start(session.db_user)
        route = session.identity.route
        upstream = await engine.start(b"", session.db_user, conn.stream,
                                      caller=session.identity, remote=session.remote,
                                      db_name=route.database if route else "",
                                      session_id=session.session_id)
        return upstream.stream


def _farewell(message: str) -> bytes:
    return resp.error_reply(f"ERR {message}")
