"""The cluster proxy's MongoDB front end (ALPN `teleport-mongodb`, and `-ping`).

Tunnel mode: the identity comes from the outer TLS. Non-tunnel mode: the outer TLS
carries no client certificate and the client's own TLS starts at its first byte inside
it; it is terminated here (`TLSStream.wrap_inner`) with a certificate of the Database CA
— the CA of the bot's `mongo.cas` — so the guide's URI
(`tls=true&tlsCAFile=DIR/mongo.cas&tlsCertificateKeyFile=DIR/mongo.crt`) works as is,
and the identity is taken from that inner handshake's client certificate.

Then the access check and the engine's dial (engines/mongodb.py: MONGODB-X509 as
`CN=<db user>`). A refusal or a failed dial is held until the client's first message
and answered in the format that message expects, so the driver shows why.

A session then runs on the native relay (relay/pipe.py, `Inspect("mongodb")`, via
DbFrontend.relay: its bytes count in the transmit metrics, `-ping` keepalives come from
the relay): an OP_MSG on the session's database whose command is not one Python decides
passes natively; every other client message is held and judged by proxy/mongojudge.py
(wire/mongomsg.py, a bounded walk): refused with a command error, answered in its format
(the session goes on), unless its `$db` is one the session's roles allow (a handshake
`hello`/`isMaster` needs none) and it is not an authentication command (`authenticate`,
`saslStart`, `saslContinue`, `logout`, …); compression is never agreed (stripped from the
client's handshake: forwarded in its place), so OP_COMPRESSED is refused. The database's
bytes go back to the client as they came. The query audit reads both directions
natively (csrc/mwi_mgoaudit.h → proxy/mgoqueryaudit.py): one `db.session.query` per
client message, with its reply's summary. A cut (lock, expiry) answers the client's next message with why
(MongoDB has no unsolicited message), within FAREWELL_TIMEOUT, and ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from mwiproxy import _native
from mwiproxy.auth import audit
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.mongodb import PROTOCOL, MongoEngine, MongoUpstream
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.metrics.cluster import RESULT_ERROR, NoopProxyMetrics
from mwiproxy.proxy.access import (
    Refusal,
    check_certificate,
    check_policy,
    check_policy_off_loop,
)
from mwiproxy.proxy.dbsession import Conn, DbFrontend, InnerTLSError
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import accepted_at
from mwiproxy.proxy.mgoqueryaudit import MongoQueryAudit
from mwiproxy.proxy.mongojudge import FAREWELL_TIMEOUT, MessageJudge, answer_with
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.pipe import Audit, Inspect, Pipe
from mwiproxy.relay.streams import BufferedReader, ByteStream
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg

log = logging.getLogger("mwiproxy.proxy.mongodb")

SETUP_TIMEOUT = 10.0  # accept → inner TLS → access check (proxy.first_message_timeout)
# a refused client gets this long, and this many answers, before the proxy hangs up
REFUSAL_TIMEOUT = 15.0
NO_IDENTITY = ("no client certificate was presented: use the local proxy in tunnel mode "
               "(--tunnel), or give the client tlsCertificateKeyFile=DIR/mongo.crt")

_ENDED = (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
          mongo.ProtocolError, InnerTLSError)


class MongoFrontend(DbFrontend):
    """`engines`: the MongoDB engines, in-process or an agent's; `inner_tls`: the
    Database CA's server context (owncerts.db_inner_context)."""

    protocol = PROTOCOL

    def __init__(self, auth: AuthService, sessions: SessionRegistry,
                 inner_tls: Callable[[], _native.TLSContext], *,
                 engines: EngineDirectory[MongoEngine], ping_interval: float | None = None,
                 setup_timeout: float = SETUP_TIMEOUT,
                 metrics: NoopProxyMetrics | None = None, query_audit: bool = True,
                 query_wait: bool = False, param_key: bytes | None = None) -> None:
        super().__init__(auth, sessions, inner_tls, ping_interval, metrics)
        self._engines = engines
        self._setup_timeout = setup_timeout
        self._query_audit_on = query_audit  # audit.queries
        self._query_wait = query_wait  # audit.query_backpressure: wait
        self._param_key = param_key  # the cluster's key for document digests
        self._judges: dict[int, MessageJudge] = {}  # by session id, while it runs

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        conn = Conn(stream, BufferedReader(stream), caller, remote, accepted_at=accepted_at())
        try:
            try:
                route = await asyncio.wait_for(self._check(conn), self._setup_timeout)
            except Refusal as r:
                asked = conn.caller.route if conn.caller else None
                served = asked.service if asked and asked.service in self._engines else ""
                self.refused(conn, r, served, asked.username if asked else "",
                             asked.database if asked else "")
                await self._answer(conn, mongo.error_document(r.message))
                return
            await self._session(conn, route)
        except _ENDED as e:
            log.info("mongodb connection from %s ended: %s", remote, e or type(e).__name__)
        finally:
            conn.stream.close()  # the relay's streams end with it

    async def _check(self, conn: Conn) -> DatabaseRoute:
        """The client's own TLS in non-tunnel mode (at its first byte), then the access
        check of the route in its certificate."""
        if conn.caller is None:
            await self.accept_inner_tls(conn)
            if conn.caller is None:
                raise Refusal(NO_IDENTITY)
        route = conn.caller.route
        return check_certificate(conn.caller, db_user=route.username if route else "",
                                 db_name=route.database if route else "",
                                 protocols=(PROTOCOL,), served=self._engines)

    async def _answer(self, conn: Conn, document: mongo.Document) -> None:
        """A connect-time error, held: each client message (a bounded number, each of
        bounded size, within REFUSAL_TIMEOUT) gets it as its reply, in its format."""
        with contextlib.suppress(*_ENDED):
            await asyncio.wait_for(answer_with(conn.stream, document), REFUSAL_TIMEOUT)

    # -- a session ---------------------------------------------------------------------

    async def _session(self, conn: Conn, route: DatabaseRoute) -> None:
        assert conn.caller is not None
        try:
            grant = await check_policy_off_loop(self._auth, conn.caller, route)
        except Refusal as r:
            self.refused(conn, r, route.service, route.username, route.database)
            await self._answer(conn, mongo.error_document(r.message))
            return
        with self.registered(self.session_for(conn, grant, route.username,
                                              route.database)) as session:
            await self._run(conn, session, grant.query_audit)

    async def _run(self, conn: Conn, session: Session, policy: QueryAuditPolicy) -> None:
        started = time.monotonic()
        try:
            upstream = await self._connect(session)
        except UpstreamError as e:
            self._metrics.connection(session.service, PROTOCOL, session.mode, RESULT_ERROR)
            self.audit_start(session, error=str(e))
            await self._answer(conn, mongo.error_document(str(e), mongo.HOST_UNREACHABLE))
            return
        self.connected(session)
        judge = MessageJudge(upstream.max_message_size,
                             allowed=lambda db: self._allowed(session, db),
                             on_refused=lambda msg, why: self._message_refused(session, msg,
                                                                               why))
        inspect = Inspect("mongodb", judge.decide, max_message=upstream.max_message_size,
                          allowed=(session.db_name,) if session.db_name else ())
        self._judges[session.session_id] = judge
        queries = None
        if self._query_audit_on and policy.enabled:
            queries = MongoQueryAudit(
                self._auth.audit.emit, {**self.who(session), "session_id": session.session_id},
                policy, wait=self._query_wait, key=self._param_key,
                on_dropped=lambda n: self._metrics.query_audit_dropped(PROTOCOL, n))
        stats = None
        try:
            stats = await self.relay(
                conn, session, upstream.stream, started, lambda _: b"",
                cut=lambda pipe, reason, message: _cut(pipe, judge, reason, message),
                inspect=inspect,
                audit=None if queries is None else Audit(PROTOCOL, queries.on_records,
                                                          queries.wait))
        finally:  # cut, cancelled (a shutdown) or failed: still audited (by relay)
            self._judges.pop(session.session_id, None)
            upstream.stream.close()
            if queries is not None:
                queries.ended(stats.audit_dropped if stats is not None else 0)

    def end_fields(self, session: Session) -> dict[str, int]:
        """The messages decided in Python and refused, for the session's end event."""
        judge = self._judges.get(session.session_id)
        return {} if judge is None else {"held_messages": judge.held,
                                         "refused_messages": judge.refused}

    async def _connect(self, session: Session) -> MongoUpstream:
        """Authenticated as the session's user: by this process's engine, or through one
        of the agents serving the database (which signs in the same way)."""
        engine = self._engines.serving(session.service)
        if isinstance(engine, MongoEngine):
            return await engine.connect(session.db_user)
        return await engine.connect_mongo(session.db_user, caller=session.identity,
                                          db_name=session.db_name, remote=session.remote,
                                          session_id=session.session_id)

    def _allowed(self, session: Session, db_name: str) -> str:
        """"" if the session's roles allow `db_name`, else why not (the relay remembers
        the answer for the session)."""
        asked = DatabaseRoute(session.service, PROTOCOL, session.db_user, db_name)
        try:
            check_policy(self._auth, session.identity, asked)
        except Refusal as r:
            return r.message
        return ""

    def _message_refused(self, session: Session, msg: mongomsg.ClientMessage,
                         reason: str) -> None:
        log.info("session %d: refused %r on %r: %s", session.session_id, msg.command,
                 msg.database, reason)
        self._auth.audit.emit(
            audit.ACCESS_DENIED, session_id=session.session_id, **self.who(session),
            command=msg.command, message_db=msg.database, reason=reason)


def _cut(pipe: Pipe, judge: MessageJudge, reason: str, message: str) -> None:
    """A cut session: the client's next message (none passes natively from now) is
    answered with `message` and ends it; a client that sends none is closed after
    FAREWELL_TIMEOUT."""
    judge.cut(message or f"session ended: {reason}")
    pipe.hold_all()
    asyncio.get_running_loop().call_later(FAREWELL_TIMEOUT, pipe.close, reason)
