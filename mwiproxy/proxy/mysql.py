"""The cluster proxy's MySQL/MariaDB front end (ALPN `teleport-mysql`, `-ping` framed or
not).

The server speaks first, so the proxy greets the client itself (HandshakeV10) before it
knows who the client is in non-tunnel mode, and before any database is dialed in either
mode:
- capabilities: a fixed conservative set (`mysql_handshake.PROXY_CAPS`: no compression,
  no session tracking, no DEPRECATE_EOF, no LOAD DATA LOCAL, no connection attributes),
  CLIENT_SSL added in non-tunnel mode only; the engine intersects what the client then
  picks with what the server offers, and every flag left in that set either is offered
  by every 4.1 server or leaves the packet formats unchanged when the server lacks it,
  so the client never parses a format the server does not send;
- server version: the one the database's last greeting gave the engine (the service is
  known from the certificate in tunnel mode; in non-tunnel mode, when the cluster
  serves a single MySQL database, that one's), else DEFAULT_VERSION. Dialing the
  database to learn it first would let an unauthenticated client make the proxy dial;
  a greeting needs no database.
- auth: mysql_native_password with a fresh scramble; whatever the client answers is not
  checked (the certificate is the credential), and it is told OK only after the
  database accepted the engine's own sign-in, or shown the database's ERR.

Tunnel mode: the identity comes from the outer TLS. Non-tunnel mode: the client's SSL
Request → the client's TLS runs inside the outer TLS (`TLSStream.wrap_inner`), with the
proxy's certificate; the identity comes from the client certificate of that handshake.

Then the access check (db user, database, locks, generation), the engine, and the native
relay, with the client→server inspector holding COM_INIT_DB (checked against the role's
db_names) and COM_CHANGE_USER (always refused): each refusal is an ERR_Packet saying why,
audited as `db.access.denied`, and ends the session. The query audit (audit.queries,
the roles' policy) reads both directions natively (csrc/mwi_myaudit.h): its records
become `db.session.query` / `db.session.query.failed` (proxy/myqueryaudit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.mysql import PROTOCOLS, MySQLEngine, Upstream, UpstreamRefused
from mwiproxy.identity import names
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.metrics.cluster import (
    MODE_NON_TUNNEL,
    MODE_TUNNEL,
    RESULT_ERROR,
    RESULT_REFUSED,
    NoopProxyMetrics,
)
from mwiproxy.proxy.access import (
    Refusal,
    check_certificate,
    check_policy,
    check_policy_off_loop,
)
from mwiproxy.proxy.dbsession import Conn, DbFrontend, InnerTLSError
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import accepted_at
from mwiproxy.proxy.myqueryaudit import MySQLQueryAudit
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.pipe import Audit, Inspect
from mwiproxy.relay.streams import BufferedReader, ByteStream
from mwiproxy.wire import mysql
from mwiproxy.wire import mysql_handshake as hs

log = logging.getLogger("mwiproxy.proxy.mysql")
PROTOCOL = "mysql"
DEFAULT_VERSION = "8.0.0-mwiproxy"
STARTUP_TIMEOUT = 10.0

NO_IDENTITY = ("no client certificate was presented: use the local proxy in tunnel mode "
               "(--tunnel), or give the client --ssl-cert=DIR/tlscert --ssl-key=DIR/key")
# a schema name is compared as text here but read by the server in the session's
# character set (the handshake's, or any SET NAMES since): only ASCII reads the same in
# every character set a MySQL client may use
NOT_ASCII = "only ASCII database names are accepted through mwiproxy"
ER_DBACCESS_DENIED, DBACCESS_STATE = 1044, "42000"  # ER_DBACCESS_DENIED_ERROR
ER_CONNECTION_KILLED, KILLED_STATE = mysql.ER_CONNECTION_KILLED, mysql.KILLED_STATE
ER_NET_READ_ERROR, NET_STATE = 1158, "08S01"
# a database that cannot be reached: a server error code, as the client's own 2003
# (CR_CONN_HOST_ERROR) in a server's ERR packet is shown by the MariaDB client as
# "ERROR 2027 Received malformed packet", losing the reason
ER_CANT_CONNECT = mysql.ER_UNKNOWN_ERROR

_conn_ids = itertools.count(1)
_ENDED = (mysql.ProtocolError, ssl.SSLError, OSError, TimeoutError,
          asyncio.IncompleteReadError)


@dataclass
class _Conn(Conn):
    seq: int = 0xFF  # the sequence id of the last packet (the greeting's is 0)

    @property
    def mode(self) -> str:
        """No identity on the outer TLS is non-tunnel mode, inner TLS or not (yet)."""
        return MODE_NON_TUNNEL if self.inner_tls or self.caller is None else MODE_TUNNEL

    async def send(self, payload: bytes) -> None:
        """One packet to the client, next in its sequence."""
        self.seq = (self.seq + 1) & 0xFF
        await self.stream.write(mysql.packet(payload, self.seq))

    async def read(self) -> bytes:
        """The client's next packet (bounded: the connection phase's cap)."""
        seq, payload = await hs.read_packet(self.reader)
        if seq != (self.seq + 1) & 0xFF:
            raise mysql.ProtocolError(f"packet out of order (sequence {seq})")
        self.seq = seq
        return payload


class MySQLFrontend(DbFrontend):
    protocol = PROTOCOL

    def __init__(self, auth: AuthService, engines: EngineDirectory[MySQLEngine],
                 sessions: SessionRegistry, inner_tls: Callable[[], _native.TLSContext],
                 ping_interval: float | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT,
                 metrics: NoopProxyMetrics | None = None, query_audit: bool = True,
                 query_wait: bool = False, param_key: bytes | None = None) -> None:
        super().__init__(auth, sessions, inner_tls, ping_interval, metrics)
        self._engines = engines
        self._startup_timeout = startup_timeout
        self._query_audit_on = query_audit  # audit.queries
        self._query_wait = query_wait  # audit.query_backpressure: wait
        self._param_key = param_key  # the cluster's key for parameter digests

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        conn = _Conn(stream, BufferedReader(stream), caller, remote,
                     accepted_at=accepted_at())
        try:
            hello = await asyncio.wait_for(self._handshake(conn), self._startup_timeout)
            await self._session(conn, hello)
        except Refusal as r:
            await self._refuse(conn, r)
        except _ENDED as e:
            if isinstance(e, TimeoutError):
                self._metrics.refusal(PROTOCOL, "timeout")
            log.info("mysql connection from %s ended before sign-in: %s", remote,
                     e or type(e).__name__)
            if isinstance(e, mysql.ProtocolError | InnerTLSError | TimeoutError):
                why = str(e) or (f"no handshake within {self._startup_timeout:g}s")
                with contextlib.suppress(*_ENDED):
                    await conn.send(_err(ER_NET_READ_ERROR, NET_STATE, why))
        finally:
            conn.stream.close()  # a no-op once a relay took it over

    # -- the connection phase ----------------------------------------------------------

    def _greeting(self, conn: _Conn) -> bytes:
        route = conn.caller.route if conn.caller else None
        # an agent's database: its server is not dialed here, the version not known
        engine = self._engines.local(route.service) if route else self._engines.sole_local()
        version = (engine.server_version if engine else None) or DEFAULT_VERSION
        caps = hs.PROXY_CAPS | (hs.SSL if conn.caller is None else 0)
        scramble = bytes(1 + b % 126 for b in os.urandom(20))  # no NUL, as servers do
        return hs.build_greeting(hs.Greeting(
            version, next(_conn_ids) & 0xFFFFFFFF, caps, hs.UTF8MB4_GENERAL_CI,
            hs.STATUS_AUTOCOMMIT, scramble, hs.NATIVE_PASSWORD))

    async def _handshake(self, conn: _Conn) -> hs.HandshakeResponse:
        if conn.caller is not None:  # tunnel mode: a certificate unfit for this protocol
            # or service (or expired) is refused in place of the greeting
            route = conn.caller.route
            check_certificate(conn.caller, db_user=route.username if route else "",
                              db_name=route.database if route else "",
                              protocols=PROTOCOLS, served=self._engines)
        await conn.send(self._greeting(conn))
        payload = await conn.read()
        if hs.is_ssl_request(payload):
            if conn.caller is not None:  # CLIENT_SSL was not offered in tunnel mode
                raise mysql.ProtocolError("TLS was not offered: the tunnel is TLS already")
            await self.accept_inner_tls(conn, conn.reader.leftover())
            payload = await conn.read()
        return hs.parse_handshake_response(payload)

    async def _refuse(self, conn: _Conn, refusal: Refusal, user: str = "",
                      database: str = "") -> None:
        route = conn.caller.route if conn.caller else None
        service = route.service if route and route.service in self._engines else ""
        if route is not None and not user:  # refused before the client named any
            user, database = route.username, route.database
        self.refused(conn, refusal, service, user, database)
        with contextlib.suppress(*_ENDED):
            await conn.send(_err(mysql.ER_ACCESS_DENIED, mysql.ACCESS_DENIED_STATE,
                                 refusal.message))

    # -- a session ---------------------------------------------------------------------

    async def _session(self, conn: _Conn, hello: hs.HandshakeResponse) -> None:
        route = conn.caller.route if conn.caller else None
        db_user = hello.user
        db_name = hello.database or (route.database if route else "")
        try:
            if conn.caller is None:
                raise Refusal(NO_IDENTITY)
            if not db_name.isascii():
                raise Refusal(NOT_ASCII, "bad_startup")
            asked = check_certificate(conn.caller, db_user=db_user, db_name=db_name,
                                      protocols=PROTOCOLS, served=self._engines)
            grant = await check_policy_off_loop(self._auth, conn.caller, asked)
        except Refusal as r:
            await self._refuse(conn, r, db_user, db_name)
            return
        with self.registered(self.session_for(conn, grant, db_user, db_name)) as session:
            await self._run(conn, session, hello, grant.query_audit)

    async def _run(self, conn: _Conn, session: Session, hello: hs.HandshakeResponse,
                   policy: QueryAuditPolicy) -> None:
        started = time.monotonic()
        try:
            upstream = await self._start(session, hello)
        except (UpstreamError, UpstreamRefused) as e:
            refused = isinstance(e, UpstreamRefused)
            self._metrics.connection(session.service, PROTOCOL, session.mode,
                                     RESULT_REFUSED if refused else RESULT_ERROR)
            self.audit_start(session, error=str(e))
            with contextlib.suppress(*_ENDED):
                await conn.send(e.payload if isinstance(e, UpstreamRefused) else
                                _err(ER_CANT_CONNECT, mysql.GENERAL_ERROR_STATE, str(e)))
            return
        except asyncio.CancelledError:
            self._metrics.connection(session.service, PROTOCOL, session.mode, RESULT_ERROR)
            self.audit_start(session, error="the cluster proxy shut down while connecting")
            raise
        try:
            await conn.send(upstream.ok)  # the database's own OK, in the client's sequence
            self.connected(session)
            if upstream.leftover:  # the server's, after its OK
                await conn.stream.write(upstream.leftover)
            inspect = Inspect(protocol="mysql", decide=_Decider(self, conn, session).decide,
                              violation_farewell=_err(ER_NET_READ_ERROR, NET_STATE,
                                                      "malformed packet: session ended", 1))
            if conn.reader.leftover():  # a client waits for the OK before its first command
                self.audit_start(session, error="a command was sent before the sign-in OK")
                await conn.stream.write(_err(ER_NET_READ_ERROR, NET_STATE,
                                             "a command was sent before the sign-in OK", 1))
                return
            queries = self._query_audit(session, policy)
            stats = None
            try:
                stats = await self.relay(
                    conn, session, upstream.stream, started,
                    lambda message: _err(ER_CONNECTION_KILLED, KILLED_STATE, message, 1),
                    inspect=inspect,
                    audit=None if queries is None else Audit(PROTOCOL, queries.on_records,
                                                              queries.wait))
            finally:
                if queries is not None:
                    queries.ended(stats.audit_dropped if stats is not None else 0)
        finally:
            upstream.stream.close()  # a no-op once the relay took it over

    def _query_audit(self, session: Session, policy: QueryAuditPolicy
                     ) -> MySQLQueryAudit | None:
        """The session's query audit (None: off, or its roles turned it off): the tap
        reads the plaintext from the first command after the sign-in OK."""
        if not (self._query_audit_on and policy.enabled):
            return None
        who = {**self.who(session), "session_id": session.session_id}
        return MySQLQueryAudit(self._auth.audit.emit, who, policy, wait=self._query_wait,
                               key=self._param_key,
                               on_dropped=lambda n: self._metrics.query_audit_dropped(
                                   PROTOCOL, n),
                               emit_many=self._auth.audit.emit_many)

    async def _start(self, session: Session, hello: hs.HandshakeResponse) -> Upstream:
        """Signed in as the session's user: by this process's engine, or through one of
        the agents serving the database (which signs in the same way)."""
        engine = self._engines.serving(session.service)
        if isinstance(engine, MySQLEngine):
            return await engine.start(session.db_user, session.db_name,
                                      hello.capabilities, charset=hello.charset)
        return await engine.start_mysql(session.db_user, session.db_name,
                                        hello.capabilities, charset=hello.charset,
                                        caller=session.identity, remote=session.remote,
                                        session_id=session.session_id)

    # -- what the relay holds ----------------------------------------------------------

    def check_schema(self, session: Session, schema: str) -> str:
        """'' if the session may switch to `schema` (COM_INIT_DB), else why not."""
        try:
            names.db_name(schema, PROTOCOL)
        except names.InvalidName as e:
            return str(e)
        try:
            check_policy(self._auth, session.identity, DatabaseRoute(
                session.service, PROTOCOL, session.db_user, schema))
        except Refusal as r:
            return r.reason
        return ""

    def held_refused(self, conn: _Conn, session: Session, reason: str, schema: str) -> None:
        log.info("session %d: %s", session.session_id, reason)
        self._metrics.refusal(PROTOCOL, "access_denied")
        self.audit_denied(conn, reason, session.db_user, schema)


class _Decider:
    """The relay's verdict on a held client packet (COM_INIT_DB, COM_CHANGE_USER)."""

    def __init__(self, frontend: MySQLFrontend, conn: _Conn, session: Session) -> None:
        self._frontend, self._conn, self._session = frontend, conn, session

    async def decide(self, message: bytes) -> bytes | None:
        try:
            command, arg = hs.parse_command(message)
        except mysql.ProtocolError as e:
            return _err(ER_NET_READ_ERROR, NET_STATE, str(e), 1)
        session = self._session
        if command == hs.COM_CHANGE_USER:
            reason = ("COM_CHANGE_USER is refused: the database user is the one the "
                      "certificate was issued for; connect anew")
            self._frontend.held_refused(self._conn, session, reason, session.db_name)
            return _err(mysql.ER_ACCESS_DENIED, mysql.ACCESS_DENIED_STATE,
                        f"access to db denied: {reason}", 1)
        if command != hs.COM_INIT_DB:  # the inspector holds nothing else
            return None
        schema = arg.decode("ascii", "replace")
        why = NOT_ASCII if not arg.isascii() else self._frontend.check_schema(session, schema)
        if not why:
            session.db_name = schema
            return None
        self._frontend.held_refused(self._conn, session, f"USE {schema!r} refused: {why}",
                                    schema)
        return _err(ER_DBACCESS_DENIED, DBACCESS_STATE, f"access to db denied: {why}", 1)


def _err(code: int, state: str, message: str, sequence: int | None = None) -> bytes:
    """An ERR_Packet payload, or the whole packet with `sequence`."""
    raw = mysql.err_packet(code, state, message, sequence or 0)
    return raw if sequence is not None else raw[4:]
