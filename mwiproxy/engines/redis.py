"""The Redis engine: dials the real Redis over TLS with a certificate from the
database-client CA (CN = the session's database user), then signs in as that user with
`AUTH <user> <placeholder>` before any byte of the client's reaches the server.

Redis 7.0 does not map a client certificate to a user: `tls-auth-clients yes` admits a
connection whose certificate chains to the database-client CA, as `default`. The ACL
users are configured `nopass` (README, "Redis"), so the certificate is the credential
and AUTH only picks the user; the cluster proxy decided beforehand who may be which
user. A refused AUTH (unknown or disabled user) is an UpstreamRefused with Redis's
own words, for the client to see.

After that the caller relays bytes; the client's own AUTH/HELLO/RESET are checked by
the front end's inspector (`proxy/redis.py`).
"""

from __future__ import annotations

import asyncio
import time

from mwiproxy import _native
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.base import (
    CONNECT_TIMEOUT,
    ClientCertSigner,
    UpstreamError,
    UpstreamTLS,
)
from mwiproxy.metrics.cluster import NoopProxyMetrics
from mwiproxy.relay.streams import dial_tcp
from mwiproxy.wire import redis as resp

PROTOCOL = "redis"
DEFAULT_USER = "default"  # Redis's user when a route names none
# what AUTH carries as the password: nopass users accept any; never a secret
PLACEHOLDER_PASSWORD = "mwiproxy-certificate"
MAX_REPLY = 4096  # the AUTH reply is one short line


class UpstreamRefused(Exception):
    """Redis refused the engine's AUTH; the message is Redis's error line."""


class RedisEngine:
    def __init__(self, db: DatabaseConfig, signer: ClientCertSigner,
                 metrics: NoopProxyMetrics | None = None) -> None:
        if db.protocol != PROTOCOL:
            raise ValueError(f"database {db.name!r} speaks {db.protocol}, not Redis")
        self.db = db
        self.name = db.name
        self.tls = UpstreamTLS(db, signer)
        self.metrics = metrics or NoopProxyMetrics()

    async def start(self, db_user: str, grant: str = "") -> _native.TLSStream:
        """A TLS connection to Redis signed in as db_user (`default` if empty).
        `grant`: in an agent, the session grant the proxy sent, for a new certificate."""
        db_user = db_user or DEFAULT_USER
        stream = await self.connect(db_user, grant)
        try:
            await stream.write(resp.encode_command("AUTH", db_user, PLACEHOLDER_PASSWORD))
            reply = await asyncio.wait_for(_read_line(stream), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            stream.close()
            raise UpstreamError(f"database {self.name!r} failed during sign-in: "
                                f"{e or 'timeout'}") from None
        except BaseException:
            stream.close()
            raise
        if reply.startswith(b"-"):
            stream.close()
            raise UpstreamRefused(
                f"database {self.name!r} refused user {db_user!r}: "
                f"{reply[1:-2].decode('utf-8', 'replace')} (is {db_user!r} an ACL user of "
                "this Redis, `on` and `nopass`?)")
        if reply != b"+OK\r\n":
            stream.close()
            raise UpstreamError(f"database {self.name!r} answered AUTH with "
                                f"{reply[:40]!r}: not a Redis server?")
        return stream

    async def connect(self, db_user: str, grant: str = "") -> _native.TLSStream:
        started = time.monotonic()
        try:
            stream = await asyncio.wait_for(self._connect(db_user, grant), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, UpstreamError) as e:  # TLSError is an OSError
            self.metrics.dial(self.name, PROTOCOL, None)
            raise self._dial_error(e) from None
        self.metrics.dial(self.name, PROTOCOL, time.monotonic() - started)
        return stream

    def _dial_error(self, e: Exception) -> UpstreamError:
        if isinstance(e, UpstreamError):
            return e
        if isinstance(e, _native.TLSError) and str(e).startswith("certificate verify failed"):
            return UpstreamError(f"the certificate of database {self.name!r} "
                                 f"({self.db.uri}) is not trusted: {e}")
        return UpstreamError(
            f"cannot reach database {self.name!r} at {self.db.uri}: {e or 'timeout'}")

    async def _connect(self, db_user: str, grant: str) -> _native.TLSStream:
        sock = await dial_tcp(*self.db.host_port)
        try:
            ctx = await self.tls.context_for(db_user, grant)
        except BaseException:
            sock.close()
            raise
        return await self.tls.start_tls(sock, ctx)


async def _read_line(stream: _native.TLSStream) -> bytes:
    """One reply line (the AUTH reply); Redis sends nothing else before it."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        if len(buf) > MAX_REPLY:
            raise UpstreamError(f"a sign-in reply of more than {MAX_REPLY} bytes")
        data = await stream.read(MAX_REPLY)
        if not data:
            raise OSError("the database closed the connection")
        buf += data
    return buf
