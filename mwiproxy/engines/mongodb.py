"""The MongoDB engine: dials the database with TLS from the first byte (MongoDB has no
in-protocol TLS request), shows it a certificate of the database-client CA whose subject
is exactly `CN=<database user>`, asks `isMaster` (for maxMessageSizeBytes, the bound of
every client message after) and authenticates with MONGODB-X509 as the `$external` user
`CN=<database user>` — what a real server needs: that user created in `$external` and
`net.tls.CAFile` trusting the database-client CA.

The client's messages then go to this connection, each checked by the front end
(proxy/mongodb.py); the client never authenticates itself.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.base import (
    CONNECT_TIMEOUT,
    ClientCertSigner,
    UpstreamError,
    UpstreamTLS,
)
from mwiproxy.metrics.cluster import NoopProxyMetrics
from mwiproxy.relay.streams import BufferedReader, dial_tcp
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg

PROTOCOL = "mongodb"
# the server's answers to the engine's own commands are small: a bigger one is an error
MAX_ANSWER = 1 << 20
_REQUEST_IDS = itertools.count(1)


@dataclass
class MongoUpstream:
    stream: _native.TLSStream
    max_message_size: int  # the server's maxMessageSizeBytes (default 48 MB)


class MongoEngine:
    def __init__(self, db: DatabaseConfig, signer: ClientCertSigner,
                 metrics: NoopProxyMetrics | None = None) -> None:
        if db.protocol != PROTOCOL:
            raise ValueError(f"database {db.name!r} speaks {db.protocol}, not MongoDB")
        self.db = db
        self.name = db.name
        self.tls = UpstreamTLS(db, signer)
        self.metrics = metrics or NoopProxyMetrics()

    async def connect(self, db_user: str, grant: str = "") -> MongoUpstream:
        """A TLS connection to the database, authenticated as `CN=<db_user>`. `grant`:
        in an agent, the session grant the proxy sent, for a new certificate."""
        started = time.monotonic()
        try:
            upstream = await asyncio.wait_for(self._connect(db_user, grant),
                                             CONNECT_TIMEOUT)
        except (OSError, TimeoutError, mongo.ProtocolError) as e:  # TLSError: an OSError
            self.metrics.dial(self.name, PROTOCOL, None)
            raise self._dial_error(e) from None
        except UpstreamError:
            self.metrics.dial(self.name, PROTOCOL, None)
            raise
        self.metrics.dial(self.name, PROTOCOL, time.monotonic() - started)
        return upstream

    def _dial_error(self, e: Exception) -> UpstreamError:
        where = f"database {self.name!r} ({self.db.uri})"
        if isinstance(e, _native.TLSError) and str(e).startswith("certificate verify failed"):
            return UpstreamError(f"the certificate of {where} is not trusted: {e}")
        return UpstreamError(f"cannot reach {where}: {e or 'timeout'}")

    async def _connect(self, db_user: str, grant: str) -> MongoUpstream:
        ctx = await self.tls.context_for(db_user, grant)
        stream = await self.tls.start_tls(await dial_tcp(*self.db.host_port), ctx)
        try:
            reader = BufferedReader(stream)
            hello = await self._command(stream, reader, {"isMaster": 1, "$db": "admin"})
            size = hello.get("maxMessageSizeBytes", mongo.MAX_MESSAGE)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1024:
                # a server that says less than 1 KiB cannot take a driver's handshake
                raise UpstreamError(f"database {self.name!r} announced maxMessageSizeBytes "
                                    f"{size!r}")
            await self._authenticate(stream, reader, db_user)
            if leftover := reader.leftover():
                raise UpstreamError(f"database {self.name!r} sent {len(leftover)} bytes "
                                    "nobody asked for")
        except BaseException:
            stream.close()
            raise
        return MongoUpstream(stream, min(size, mongo.MAX_MESSAGE))

    async def _authenticate(self, stream: _native.TLSStream, reader: BufferedReader,
                            db_user: str) -> None:
        answer = await self._command(stream, reader, {
            "authenticate": 1, "mechanism": "MONGODB-X509", "user": f"CN={db_user}",
            "$db": "$external"})
        if answer.get("ok") not in (1, 1.0, True):
            why = answer.get("errmsg") or "authentication failed"
            raise UpstreamError(f"database {self.name!r} refused MONGODB-X509 for "
                                f"CN={db_user}: {why}")

    async def _command(self, stream: _native.TLSStream, reader: BufferedReader,
                       command: mongo.Document) -> dict[str, mongomsg.Scalar]:
        request_id = next(_REQUEST_IDS) & 0x7FFFFFFF
        await stream.write(mongo.op_msg(0, command, request_id))
        head = await reader.readexactly(mongo.HEADER_SIZE)
        header = mongo.parse_header(head, MAX_ANSWER)
        message = head + await reader.readexactly(header.length - mongo.HEADER_SIZE)
        header, document = mongomsg.reply_scalars(message, MAX_ANSWER)
        if header.response_to != request_id:
            raise mongo.ProtocolError(f"an answer to request {header.response_to}, "
                                      f"not {request_id}")
        return document
