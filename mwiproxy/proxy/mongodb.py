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

A session then runs two loops in Python (no native MongoDB framer yet): every client
message is read whole (16 bytes up to the server's maxMessageSizeBytes), inspected
(wire/mongomsg.py, a bounded walk) and refused with a command error unless its `$db` is
one the session's roles allow (a handshake `hello`/`isMaster` needs none) and it is not
an authentication command (`authenticate`, `saslStart`, `saslContinue`, `logout`, …);
compression is never agreed (stripped from the client's handshake), so OP_COMPRESSED is
refused. The database's bytes go back unparsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mwiproxy import _native
from mwiproxy.auth import audit
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.mongodb import PROTOCOL, MongoEngine, MongoUpstream
from mwiproxy.identity.certs import DatabaseRoute, Identity, identity_from_der
from mwiproxy.metrics.cluster import (
    MODE_NON_TUNNEL,
    MODE_TUNNEL,
    RESULT_ERROR,
    RESULT_REFUSED,
    RESULT_SUCCESS,
    NoopProxyMetrics,
)
from mwiproxy.proxy.access import Refusal, check_certificate, check_policy
from mwiproxy.proxy.listener import accepted_at
from mwiproxy.proxy.mongoloop import Relay, RelayResult
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.streams import BufferedReader, ByteStream, FramedStream
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg

log = logging.getLogger("mwiproxy.proxy.mongodb")
session_log = logging.getLogger("mwiproxy.proxy.session")

SETUP_TIMEOUT = 10.0  # accept → inner TLS → check → dial (proxy.first_message_timeout)
# a refused client gets this long, and this many answers, before the proxy hangs up
REFUSAL_TIMEOUT = 15.0
MAX_ANSWERS = 16
READ_CAP = 64 * 1024  # the largest message read from a client that is refused anyway
NO_IDENTITY = ("no client certificate was presented: use the local proxy in tunnel mode "
               "(--tunnel), or give the client tlsCertificateKeyFile=DIR/mongo.crt")

_ENDED = (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
          mongo.ProtocolError)


@dataclass
class _Conn:
    stream: ByteStream
    caller: Identity | None
    remote: str
    inner_tls: bool = False
    accepted_at: float = 0.0
    route: DatabaseRoute | None = field(default=None)

    @property
    def mode(self) -> str:
        return MODE_NON_TUNNEL if self.inner_tls else MODE_TUNNEL


class MongoFrontend:
    def __init__(self, auth: AuthService, engines: Mapping[str, MongoEngine],
                 sessions: SessionRegistry, inner_tls: Callable[[], _native.TLSContext],
                 ping_interval: float | None = None, setup_timeout: float = SETUP_TIMEOUT,
                 metrics: NoopProxyMetrics | None = None) -> None:
        self._ping_interval = ping_interval
        self._auth = auth
        self._engines = dict(engines)
        self._sessions = sessions
        self._inner_tls = inner_tls
        self._setup_timeout = setup_timeout
        self._metrics = metrics or NoopProxyMetrics()

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        conn = _Conn(stream, caller, remote, accepted_at=accepted_at())
        try:
            await self._serve(conn)
        except _ENDED as e:
            log.info("mongodb connection from %s ended: %s", remote, e or type(e).__name__)
        finally:
            conn.stream.close()  # the relay's streams end with it

    async def _serve(self, conn: _Conn) -> None:
        try:
            grant, upstream = await asyncio.wait_for(self._setup(conn), self._setup_timeout)
        except Refusal as r:
            self._refused(conn, r)
            await self._answer_all(conn.stream, mongo.error_document(r.message))
            return
        except UpstreamError as e:
            assert conn.caller is not None and conn.route is not None
            self._metrics.connection(conn.route.service, PROTOCOL, conn.mode, RESULT_ERROR)
            self._audit_start(conn.caller, conn.route, conn.remote, error=str(e))
            await self._answer_all(conn.stream, mongo.error_document(
                str(e), mongo.HOST_UNREACHABLE))
            return
        try:
            await self._session(conn, grant, upstream)
        finally:
            upstream.stream.close()

    # -- setup -------------------------------------------------------------------------

    async def _setup(self, conn: _Conn) -> tuple[tuple[tuple[str, ...], bool], MongoUpstream]:
        if conn.caller is None:
            await self._accept_inner_tls(conn)
        caller = conn.caller
        route = caller.route if caller else None
        asked = check_certificate(caller, db_user=route.username if route else "",
                                  db_name=route.database if route else "",
                                  protocols=(PROTOCOL,), served=self._engines)
        assert caller is not None
        conn.route = asked
        grant = check_policy(self._auth, caller, asked)
        upstream = await self._engines[asked.service].connect(asked.username)
        return (grant.roles, grant.disconnect_at_expiry), upstream

    async def _accept_inner_tls(self, conn: _Conn) -> None:
        """The client's own TLS, from its first byte inside the outer TLS."""
        outer, framing = conn.stream, None
        if isinstance(outer, FramedStream):  # `-ping`: its records travel in frames
            framing = outer.framing(None)
            outer = outer.inner
        if not isinstance(outer, _native.TLSStream):
            raise mongo.ProtocolError("the client's TLS is carried only inside the proxy's")
        inner = outer.wrap_inner(self._inner_tls(), framing=framing)
        conn.stream, conn.inner_tls = inner, True  # owns the outer stream from here
        try:
            await inner.handshake()
        except (ssl.SSLError, OSError) as e:
            self._audit_denied(conn, f"client TLS handshake failed: {e}")
            raise
        der = inner.peer_cert_der()
        if not der:
            raise Refusal(NO_IDENTITY)
        try:
            conn.caller = identity_from_der(der)
        except ValueError as e:
            raise Refusal(f"the client certificate carries no identity: {e}") from None

    # -- refusals ----------------------------------------------------------------------

    def _refused(self, conn: _Conn, refusal: Refusal) -> None:
        log.info("refused mongodb %s from %s: %s",
                 conn.caller.user if conn.caller else "anonymous", conn.remote, refusal.reason)
        route = conn.caller.route if conn.caller else None
        service = route.service if route and route.service in self._engines else ""
        self._metrics.refusal(PROTOCOL, refusal.code)
        self._metrics.connection(service, PROTOCOL, conn.mode, RESULT_REFUSED)
        self._audit_denied(conn, refusal.reason)

    def _audit_denied(self, conn: _Conn, reason: str) -> None:
        caller = conn.caller
        route = caller.route if caller else None
        self._auth.audit.emit(
            audit.ACCESS_DENIED, user=caller.user if caller else "", protocol=PROTOCOL,
            db_service=route.service if route else "",
            db_user=route.username if route else "",
            db_name=route.database if route else "", reason=reason, remote=conn.remote)

    async def _answer_all(self, stream: ByteStream, document: mongo.Document) -> None:
        """A connect-time error, held: each client message (a bounded number, each of
        bounded size, within REFUSAL_TIMEOUT) gets it as its reply, in its format."""
        with contextlib.suppress(*_ENDED):
            await asyncio.wait_for(answer_with(stream, document), REFUSAL_TIMEOUT)

    # -- a session ---------------------------------------------------------------------

    async def _session(self, conn: _Conn, grant: tuple[tuple[str, ...], bool],
                       upstream: MongoUpstream) -> None:
        assert conn.caller is not None and conn.route is not None
        route, (roles, at_expiry) = conn.route, grant
        session = Session(conn.caller, route.service, route.username, route.database,
                          conn.remote, roles=roles, disconnect_at_expiry=at_expiry,
                          mode=conn.mode, accepted_at=conn.accepted_at)
        session.first_byte = time.monotonic() - session.accepted_at
        self._metrics.first_byte(session.service, PROTOCOL, session.mode, session.first_byte)
        self._metrics.connection(session.service, PROTOCOL, session.mode, RESULT_SUCCESS)
        relay = Relay(conn.stream, upstream.stream, upstream.max_message_size,
                      allowed=lambda db: self._allowed(session, db),
                      on_refused=lambda msg, why: self._message_refused(session, msg, why),
                      keepalive=self._ping_interval)
        session.cut = lambda reason, message: relay.close(reason)
        self._sessions.add(session)
        started = time.monotonic()
        self._audit_start(conn.caller, route, conn.remote, session=session)
        self._metrics.opened(session.service, PROTOCOL, session.mode)
        try:
            await relay.run()
        finally:  # cut, cancelled (a shutdown) or failed: still audited
            self._sessions.remove(session)
            self._ended(session, relay.result, started)

    def _allowed(self, session: Session, db_name: str) -> str:
        """"" if the session's roles allow `db_name`, else why not (asked of the auth
        service, which caches nothing: the relay remembers the answers per session)."""
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
            audit.ACCESS_DENIED, session_id=session.session_id, **_who(session),
            command=msg.command, message_db=msg.database, reason=reason)

    def _audit_start(self, caller: Identity, route: DatabaseRoute, remote: str, *,
                     session: Session | None = None, error: str = "") -> None:
        fields = {"success": not error, **({"error": error} if error else {})}
        who = _who(session) if session else {
            "user": caller.user, "bot": caller.bot_name, "db_service": route.service,
            "db_user": route.username, "db_name": route.database, "remote": remote,
            "protocol": PROTOCOL}
        self._auth.audit.emit(audit.SESSION_START, session_id=session.session_id
                              if session else 0, **who,
                              roles=list(session.roles) if session else [], **fields)

    def _ended(self, session: Session, result: RelayResult, started: float) -> None:
        duration = time.monotonic() - started
        reason = session.end_reason or result.reason or "cancelled"
        self._auth.audit.emit(
            audit.SESSION_END, session_id=session.session_id, **_who(session),
            bytes_client_to_db=result.bytes_to_db, bytes_db_to_client=result.bytes_to_client,
            duration=round(duration, 3), reason=reason, native=False,
            messages=result.messages, refused_messages=result.refused)
        self._metrics.closed(session.service, PROTOCOL, session.mode,
                             "shutdown" if reason == "cancelled" else reason, duration)
        session_log.info(
            "session %d closed: %s as %s on %s (%s, %s): %d messages (%d refused), %d bytes "
            "to the database, %d from it, %.3fs, %s", session.session_id,
            session.identity.user, session.db_user, session.service, PROTOCOL, session.mode,
            result.messages, result.refused, result.bytes_to_db, result.bytes_to_client,
            duration, reason)


def _who(session: Session) -> dict[str, str]:
    return {"user": session.identity.user, "bot": session.identity.bot_name,
            "db_service": session.service, "db_user": session.db_user,
            "db_name": session.db_name, "remote": session.remote, "protocol": PROTOCOL}


async def answer_with(stream: ByteStream, document: mongo.Document) -> None:
    """Answer each client message (up to MAX_ANSWERS, each ≤ READ_CAP) with `document`,
    in the format it expects (OP_REPLY to OP_QUERY, else OP_MSG); return at the client's
    hang-up between messages."""
    reader = BufferedReader(stream)
    for _ in range(MAX_ANSWERS):
        try:
            head = await reader.readexactly(mongo.HEADER_SIZE)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise
            return
        header = mongo.parse_header(head)
        if header.length > READ_CAP:
            raise mongo.ProtocolError(f"a message of {header.length} bytes from a refused "
                                      f"client (read at most {READ_CAP})")
        request = mongo.parse_request(
            head + await reader.readexactly(header.length - mongo.HEADER_SIZE))
        if request.expects_reply:
            await stream.write(mongo.reply_to(request, document))
