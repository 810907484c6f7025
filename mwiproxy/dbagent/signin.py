"""How an agent signs a link session in to its database, one way per engine, with the
database-client certificate the session's grant pays for (`engines/*`, as in the
cluster's own process), and what it tells the cluster proxy (`wire/agentlink.py`):

- PostgreSQL / CockroachDB: the client's StartupMessage; the server's answer up to
  ReadyForQuery (or its ErrorResponse) goes back as the answer, with the cancel key;
- Redis: TLS as the user's certificate, then AUTH as the user; no answer;
- MySQL / MariaDB: the server's greeting, SSL Request, TLS, HandshakeResponse41 with
  the client's capability flags and character set (the proxy's `startup`); the server's
  OK payload (or its ERR, refused) is the answer, what it sent after the OK follows;
- MongoDB: TLS, `isMaster`, MONGODB-X509; the answer is maxMessageSizeBytes.

The protocol's checks of the session's messages stay at the cluster proxy, which holds
the roles; the agent relays bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.engines.mongodb import PROTOCOL as MONGODB
from mwiproxy.engines.mongodb import MongoEngine
from mwiproxy.engines.mysql import PROTOCOLS as MYSQL_PROTOCOLS
from mwiproxy.engines.mysql import MySQLEngine
from mwiproxy.engines.mysql import UpstreamRefused as MySQLRefused
from mwiproxy.engines.postgres import PROTOCOLS as POSTGRES_PROTOCOLS
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.engines.postgres import UpstreamRefused as PostgresRefused
from mwiproxy.engines.redis import PROTOCOL as REDIS
from mwiproxy.engines.redis import RedisEngine
from mwiproxy.engines.redis import UpstreamRefused as RedisRefused
from mwiproxy.identity.certs import Identity
from mwiproxy.wire import agentlink, mysql
from mwiproxy.wire import postgres as pg
from mwiproxy.wire import redis as resp

Engine = PostgresEngine | RedisEngine | MySQLEngine | MongoEngine


class Refused(Exception):
    """The database refused the sign-in; `answer` is its refusal for the client (in
    the protocol's format), if it sent one."""

    def __init__(self, message: str, answer: bytes = b"") -> None:
        super().__init__(message)
        self.answer = answer


@dataclass
class SignedIn:
    stream: _native.TLSStream  # the database connection, signed in as the user
    answer: bytes = b""
    cancel_key: tuple[int, int] | None = None
    leftover: bytes = b""  # the server's, after its answer: to the proxy after the reply


def label(engine: Engine) -> str:
    """The metrics' protocol label (CockroachDB's sessions count as postgres)."""
    return "postgres" if isinstance(engine, PostgresEngine) else engine.db.protocol


def protocols(engine: Engine) -> tuple[str, ...]:
    """The route protocols a client certificate may name for this engine's database."""
    if isinstance(engine, PostgresEngine):
        return POSTGRES_PROTOCOLS
    if isinstance(engine, MySQLEngine):
        return MYSQL_PROTOCOLS
    return (REDIS,) if isinstance(engine, RedisEngine) else (MONGODB,)


def farewell(engine: Engine, message: str) -> bytes:
    """What a session cut at the agent (its shutdown) tells the client, in the client's
    protocol; MongoDB has no unsolicited message, so its client sees the connection
    close."""
    if isinstance(engine, PostgresEngine):
        return pg.error_response(message, pg.ADMIN_SHUTDOWN)
    if isinstance(engine, RedisEngine):
        return resp.error_reply(f"ERR {message}")
    if isinstance(engine, MySQLEngine):  # an answer to the command in flight (seq 1)
        return mysql.err_packet(mysql.ER_CONNECTION_KILLED, mysql.KILLED_STATE, message, 1)
    return b""


async def sign_in(engine: Engine, hello: agentlink.Hello, client: Identity) -> SignedIn:
    """Raises Refused (the database said no), UpstreamError (it could not be reached
    or signed in to), agentlink.LinkError (a malformed startup)."""
    user, grant = hello.db_user, hello.grant
    if isinstance(engine, PostgresEngine):
        said = _Collector()
        try:
            up = await engine.start(hello.startup, user, said, caller=client, grant=grant)
        except PostgresRefused as e:
            raise Refused(str(e), bytes(said.data)) from None
        key = up.cancel_key
        return SignedIn(up.stream, bytes(said.data), (key.pid, key.secret) if key else None)
    if isinstance(engine, RedisEngine):
        try:
            return SignedIn(await engine.start(user, grant=grant))
        except RedisRefused as e:
            raise Refused(str(e)) from None
    if isinstance(engine, MySQLEngine):
        caps, charset = agentlink.read_mysql_startup(hello.startup)
        try:
            my = await engine.start(user, hello.db_name, caps, charset=charset, grant=grant)
        except MySQLRefused as e:
            raise Refused(str(e), e.payload) from None
        return SignedIn(my.stream, my.ok, leftover=my.leftover)
    mongo = await engine.connect(user, grant=grant)
    return SignedIn(mongo.stream, agentlink.mongo_answer(mongo.max_message_size))


class _Collector:
    """A ByteStream that keeps what the PostgreSQL engine says during startup."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def read(self, max_bytes: int = 0) -> bytes:
        return b""

    async def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass
