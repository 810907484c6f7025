"""Front ends for the protocols listed in cluster.yaml that have no engine yet:
`teleport-mysql` and its `-ping` variant (Redis and MongoDB have their engines:
`proxy/redis.py`, `proxy/mongodb.py`).

Each connection gets the same access check as PostgreSQL (identity from the outer TLS:
tunnel mode), is audited as `db.access.denied`, and is refused in the protocol's own
format so the real client shows why: with the access check's reason, or — when access
would be allowed — with "database service … has no engine in this version".

- MySQL: the server speaks first; an ERR_Packet (sequence 0) replaces the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from mwiproxy.auth import audit
from mwiproxy.auth.service import AuthService
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.identity.certs import Identity
from mwiproxy.proxy.access import Refusal, authorize
from mwiproxy.proxy.listener import ProxyListener
from mwiproxy.proxy.pingbridge import framed
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire import alpn, mysql

log = logging.getLogger("mwiproxy.proxy.unserved")

# a refused client gets this long, and this many answers, before the proxy hangs up
REFUSAL_TIMEOUT = 15.0
MAX_ANSWERS = 16
# the largest first message read from a client that is going to be refused anyway
READ_CAP = 64 * 1024

_ENDED = (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
          mysql.ProtocolError)


@dataclass(frozen=True)
class Verdict:
    message: str  # what the client is told
    denied: bool  # True: the access check refused; False: allowed, but no engine


def no_engine(service: str, protocol: str) -> str:
    return f'database service "{service}" ({protocol}) has no engine in this version of mwiproxy'


class UnservedFrontend:
    """The access check, the audit and the hang-up; subclasses speak the protocol."""

    protocol = ""

    def __init__(self, auth: AuthService, served: Collection[str]) -> None:
        self._auth = auth
        self._served = frozenset(served)

    def db_user(self, caller: Identity | None) -> str:
        """The database user a connection asks for, before any handshake: the route's."""
        route = caller.route if caller else None
        return route.username if route else ""

    async def serve(self, stream: ByteStream, caller: Identity | None, remote: str) -> None:
        verdict = self._judge(caller, remote)
        try:
            await asyncio.wait_for(self.tell(stream, verdict), REFUSAL_TIMEOUT)
        except _ENDED as e:
            log.info("%s connection from %s ended during the refusal: %s", self.protocol,
                     remote, e or type(e).__name__)
        finally:
            stream.close()

    def _judge(self, caller: Identity | None, remote: str) -> Verdict:
        route = caller.route if caller else None
        db_user, db_name = self.db_user(caller), route.database if route else ""
        try:
            authorize(self._auth, caller, db_user=db_user, db_name=db_name,
                      protocols=(self.protocol,), served=self._served)
        except Refusal as r:
            reason, verdict = r.reason, Verdict(r.message, denied=True)
        else:
            assert route is not None
            reason = no_engine(route.service, self.protocol)
            verdict = Verdict(reason, denied=False)
        log.info("refused %s %s from %s: %s", self.protocol,
                 caller.user if caller else "anonymous", remote, reason)
        self._auth.audit.emit(
            audit.ACCESS_DENIED, user=caller.user if caller else "", protocol=self.protocol,
            db_service=route.service if route else "", db_user=db_user, db_name=db_name,
            reason=reason, remote=remote)
        return verdict

    async def tell(self, stream: ByteStream, verdict: Verdict) -> None:
        raise NotImplementedError


class MySQLFrontend(UnservedFrontend):
    protocol = "mysql"

    async def tell(self, stream: ByteStream, verdict: Verdict) -> None:
        if verdict.denied:
            code, state = mysql.ER_ACCESS_DENIED, mysql.ACCESS_DENIED_STATE
        else:
            code, state = mysql.ER_UNKNOWN_ERROR, mysql.GENERAL_ERROR_STATE
        await stream.write(mysql.err_packet(code, state, verdict.message))


FRONTENDS: tuple[tuple[str, type[UnservedFrontend]], ...] = (
    (alpn.MYSQL, MySQLFrontend),
)


def served_by_protocol(databases: Iterable[DatabaseConfig]) -> dict[str, list[str]]:
    """The names of the configured databases, by protocol."""
    out: dict[str, list[str]] = {}
    for db in databases:
        out.setdefault(db.protocol, []).append(db.name)
    return out


def register_unserved(listener: ProxyListener, auth: AuthService,
                      served: Mapping[str, Collection[str]]) -> None:
    """Route each protocol without an engine (and its `-ping` variant) to its refusal."""
    for name, frontend in FRONTENDS:
        handler = frontend(auth, served.get(frontend.protocol, ())).serve
        listener.route_tls(name, handler)
        listener.route_tls(alpn.with_ping(name), framed(handler))
