"""The steps every database front end of the cluster proxy shares, whatever its protocol
(PostgreSQL `proxy/postgres.py`, Redis `proxy/redis.py`): the client's own TLS in
non-tunnel mode (terminated here, identity from its client certificate), refusals
(log, metrics, `db.access.denied`), and a session's life: registered so a lock or an
expiry cuts it, `db.session.start`, the native relay, `db.session.end`, the metrics and
the one log line at its end.

A front end subclasses `DbFrontend`, sets `protocol` (the audit's and the metrics'
label) and speaks its protocol: what a refusal or a farewell looks like on its wire.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mwiproxy import _native
from mwiproxy.auth import audit
from mwiproxy.auth.service import AuthService
from mwiproxy.identity.certs import Identity, identity_from_der
from mwiproxy.metrics.cluster import (
    MODE_NON_TUNNEL,
    MODE_TUNNEL,
    RESULT_REFUSED,
    RESULT_SUCCESS,
    NoopProxyMetrics,
)
from mwiproxy.proxy.access import Grant, Refusal
from mwiproxy.proxy.sessions import Session, SessionRegistry
from mwiproxy.relay.pipe import Pipe, PipeStats
from mwiproxy.relay.streams import BufferedReader, ByteStream, FramedStream

log = logging.getLogger("mwiproxy.proxy.dbsession")
# one line per session at its end (fields in `extra`: the JSON log has them at top level)
session_log = logging.getLogger("mwiproxy.proxy.session")


class InnerTLSError(OSError):
    """The client's own TLS cannot be carried here (not inside the proxy's TLS)."""


@dataclass
class Conn:
    stream: ByteStream
    reader: BufferedReader
    caller: Identity | None
    remote: str
    inner_tls: bool = False
    accepted_at: float = 0.0

    @property
    def mode(self) -> str:
        return MODE_NON_TUNNEL if self.inner_tls else MODE_TUNNEL


class DbFrontend:
    protocol = ""  # the audit's and the metrics' protocol label

    def __init__(self, auth: AuthService, sessions: SessionRegistry,
                 inner_tls: Callable[[], _native.TLSContext],
                 ping_interval: float | None = None,
                 metrics: NoopProxyMetrics | None = None) -> None:
        self._auth = auth
        self._sessions = sessions
        self._inner_tls = inner_tls
        self._ping_interval = ping_interval
        self._metrics = metrics or NoopProxyMetrics()

    # -- a session's life ----------------------------------------------------------------

    def session_for(self, conn: Conn, grant: Grant, db_user: str, db_name: str) -> Session:
        """The session a granted connection opens, as the owner of cuts sees it."""
        assert conn.caller is not None
        return Session(conn.caller, grant.route.service, db_user, db_name, conn.remote,
                       roles=grant.roles, disconnect_at_expiry=grant.disconnect_at_expiry,
                       mode=conn.mode, accepted_at=conn.accepted_at)

    @contextlib.contextmanager
    def registered(self, session: Session) -> Iterator[Session]:
        """The session in the registry for the block — the engine's dial included, so a
        lock or an expiry meanwhile cuts it too (see `relay`)."""
        self._sessions.add(session)
        try:
            yield session
        finally:
            self._sessions.remove(session)

    # -- non-tunnel mode: the client's own TLS -----------------------------------------

    async def accept_inner_tls(self, conn: Conn, initial: bytes = b"") -> None:
        """Terminate the client's TLS (its first bytes, read already, in `initial`)
        inside the proxy's, with the proxy's certificate; the identity is its client
        certificate's (Refusal if it carries none)."""
        ctx = self._inner_tls()
        outer, framing = conn.stream, None
        if isinstance(outer, FramedStream):  # `-ping`: the client's records travel in frames
            framing = outer.framing(None)
            outer = outer.inner
        if not isinstance(outer, _native.TLSStream):
            raise InnerTLSError("the client's TLS is carried only inside the proxy's")
        inner = outer.wrap_inner(ctx, framing=framing)
        handshake = inner.handshake(initial)
        conn.stream = inner  # owns the outer stream from here: closed with it
        try:
            await handshake
        except (ssl.SSLError, OSError) as e:
            self.audit_denied(conn, f"client TLS handshake failed: {e}")
            raise
        conn.reader, conn.inner_tls = BufferedReader(inner), True
        der = inner.peer_cert_der()
        if der:
            try:
                conn.caller = identity_from_der(der)
            except ValueError as e:
                raise Refusal(f"the client certificate carries no identity: {e}") from None

    # -- refusals ----------------------------------------------------------------------

    def refused(self, conn: Conn, refusal: Refusal, service: str = "", db_user: str = "",
                db_name: str = "") -> None:
        """Log, count and audit a refusal (the front end tells the client)."""
        log.info("refused %s %s from %s: %s", self.protocol,
                 conn.caller.user if conn.caller else "anonymous", conn.remote,
                 refusal.reason)
        self._metrics.refusal(self.protocol, refusal.code)
        self._metrics.connection(service, self.protocol, conn.mode, RESULT_REFUSED)
        self.audit_denied(conn, refusal.reason, db_user, db_name)

    def audit_denied(self, conn: Conn, reason: str, db_user: str = "",
                     db_name: str = "") -> None:
        caller = conn.caller
        route = caller.route if caller else None
        self._auth.audit.emit(
            audit.ACCESS_DENIED, user=caller.user if caller else "", protocol=self.protocol,
            db_service=route.service if route else "", db_user=db_user, db_name=db_name,
            reason=reason, remote=conn.remote)

    # -- a session ---------------------------------------------------------------------

    def connected(self, session: Session) -> None:
        """The database answered and the answer went to the client."""
        session.first_byte = time.monotonic() - session.accepted_at
        self._metrics.first_byte(session.service, self.protocol, session.mode,
                                 session.first_byte)
        self._metrics.connection(session.service, self.protocol, session.mode,
                                 RESULT_SUCCESS)

    async def relay(self, conn: Conn, session: Session, upstream: ByteStream,
                    started: float, farewell: Callable[[str], bytes],
                    cut: Callable[[Pipe, str, str], None] | None = None,
                    **pipe_options: Any) -> PipeStats:
        """Relay the set-up session until it ends: `farewell(message)` is what a cut
        (lock, expiry, shutdown) tells the client, or `cut(pipe, reason, message)` does
        the cut instead (MongoDB answers the next message); `pipe_options` go to the Pipe
        (an inspector). Audited at both ends, whatever ends it."""
        pipe = Pipe(conn.stream, upstream, keepalive=self._ping_interval,
                    count_as=self._metrics.bytes_key(session.service, self.protocol,
                                                     session.mode), **pipe_options)
        session.bytes_moved = pipe.live_bytes
        session.cut = (lambda reason, message: pipe.close(reason,
                                                          farewell_to_a=farewell(message))) \
            if cut is None else (lambda reason, message: cut(pipe, reason, message))
        if session.end_reason:  # locked while the engine was dialing
            session.end(session.end_reason)
        self.audit_start(session)
        self._metrics.opened(session.service, self.protocol, session.mode)
        try:
            stats = await pipe.run()
            log.debug("session %d relayed %s", session.session_id,
                      "natively" if stats.native else "in Python")
        finally:  # cut, cancelled (a shutdown past its grace) or failed: still audited
            self.ended(session, pipe.stats, started)
        return stats

    def ended(self, session: Session, stats: PipeStats, started: float) -> None:
        """A session's end, told once: the audit event, the metrics, the log line."""
        duration = time.monotonic() - started
        reason = session.end_reason or stats.reason or "cancelled"
        self._auth.audit.emit(
            audit.SESSION_END, session_id=session.session_id, **self.who(session),
            bytes_client_to_db=stats.bytes_a_to_b, bytes_db_to_client=stats.bytes_b_to_a,
            duration=round(duration, 3), reason=reason, native=stats.native,
            **self.end_fields(session))
        self._metrics.closed(session.service, self.protocol, session.mode,
                             "shutdown" if reason == "cancelled" else reason, duration)
        self.log_session_end(session, stats, duration, reason)

    def end_fields(self, session: Session) -> dict[str, int]:
        """A front end's own fields for the session's end event (none here)."""
        return {}

    def audit_start(self, session: Session, error: str = "") -> None:
        fields = {"success": not error, **({"error": error} if error else {})}
        self._auth.audit.emit(audit.SESSION_START, session_id=session.session_id,
                              **self.who(session), roles=list(session.roles), **fields)

    def who(self, session: Session) -> dict[str, str]:
        return {"session": session.audit_id, "user": session.identity.user,
                "bot": session.identity.bot_name,
                "db_service": session.service, "db_user": session.db_user,
                "db_name": session.db_name, "remote": session.remote,
                "protocol": self.protocol}

    def log_session_end(self, session: Session, stats: PipeStats, duration: float,
                        reason: str) -> None:
        """The one line per session (INFO, logger mwiproxy.proxy.session); its fields
        are in `extra` as well, for the JSON log."""
        ident = session.identity
        fields = {"session_id": session.session_id, "session": session.audit_id,
                  "user": ident.user,
                  "bot": ident.bot_name, "db_service": session.service,
                  "db_user": session.db_user, "db_name": session.db_name,
                  "protocol": self.protocol, "mode": session.mode,
                  "bytes_client_to_db": stats.bytes_a_to_b,
                  "bytes_db_to_client": stats.bytes_b_to_a, "duration": round(duration, 3),
                  "setup_latency": round(session.first_byte, 4), "reason": reason}
        who = f"{ident.user} (bot {ident.bot_name})" if ident.bot_name else ident.user
        session_log.info(
            "session %d closed: %s as %s@%s on %s (%s, %s): %d bytes to the database, %d "
            "from it, %.3fs (setup %.1f ms), %s", session.session_id, who, session.db_user,
            session.db_name, session.service, self.protocol, session.mode,
            stats.bytes_a_to_b, stats.bytes_b_to_a, duration, session.first_byte * 1000,
            reason, extra=fields)


async def tell_client(stream: ByteStream, data: bytes) -> None:
    """Write a refusal or an error, if the client is still there to read it."""
    with contextlib.suppress(OSError, ssl.SSLError):
        await stream.write(data)
