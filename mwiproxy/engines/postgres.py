"""The PostgreSQL engine (also CockroachDB): dials the real database with TLS, signs in
as the requested database user with a certificate from the database-client CA, replays
the client's startup message and passes the server's answer back until ReadyForQuery.

After that the caller relays bytes untouched. The BackendKeyData the server sent is
returned so the cluster proxy can route a later CancelRequest to this database only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.base import CONNECT_TIMEOUT, UpstreamError, UpstreamTLS
from mwiproxy.identity.authorities import AuthoritySet
from mwiproxy.wire import postgres as pg

PROTOCOLS = ("postgres", "cockroachdb")
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamRefused(Exception):
    """The database answered the startup with an ErrorResponse (already sent on)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "refused"))
        self.fields = fields


@dataclass
class Upstream:
    stream: Stream
    cancel_key: pg.CancelKey | None


class PostgresEngine:
    def __init__(self, db: DatabaseConfig, cas: AuthoritySet) -> None:
        if db.protocol not in PROTOCOLS:
            raise ValueError(f"database {db.name!r} speaks {db.protocol}, not PostgreSQL")
        self.db = db
        self.tls = UpstreamTLS(db, cas)

    @property
    def name(self) -> str:
        return self.db.name

    async def connect(self, db_user: str) -> Stream:
        """A TLS connection to the database, authenticated as db_user, before startup."""
        try:
            return await asyncio.wait_for(self._connect(db_user), CONNECT_TIMEOUT)
        except ssl.SSLCertVerificationError as e:
            raise UpstreamError(f"the certificate of database {self.name!r} ({self.db.uri}) "
                                f"is not trusted: {e.verify_message}") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as e:
            raise UpstreamError(
                f"cannot reach database {self.name!r} at {self.db.uri}: {e or 'timeout'}"
            ) from None

    async def _connect(self, db_user: str) -> Stream:
        host, port = self.db.host_port
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(pg.ssl_request())
            await writer.drain()
            if await reader.readexactly(1) != pg.SSL_YES:
                raise UpstreamError(f"database {self.name!r} at {self.db.uri} does not accept "
                                    "TLS connections (ssl = on is needed)")
            await writer.start_tls(self.tls.context_for(db_user),
                                   server_hostname=self.tls.server_hostname)
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def start(self, startup: bytes, db_user: str, client: asyncio.StreamWriter
                    ) -> Upstream:
        """Sign in with the client's startup message; the server's answer up to and
        including ReadyForQuery goes to `client`."""
        reader, writer = await self.connect(db_user)
        try:
            writer.write(startup)
            key = await self._pass_startup_answer(reader, client)
        except BaseException:
            writer.transport.abort()
            raise
        return Upstream((reader, writer), key)

    async def _pass_startup_answer(self, reader: asyncio.StreamReader,
                                   client: asyncio.StreamWriter) -> pg.CancelKey | None:
        key = None
        while True:
            msg = await read_startup_message(reader, self.name)
            if msg.type == b"R" and msg.auth_code != 0:
                raise UpstreamError(
                    f"database {self.name!r} asked for password authentication (method "
                    f"{msg.auth_code}); mwiproxy signs in with certificates: use `hostssl … "
                    "cert` in pg_hba.conf")
            client.write(msg.raw)
            if msg.type == b"K":
                key = msg.cancel_key
            elif msg.type == b"E":
                await client.drain()
                raise UpstreamRefused(pg.parse_error_fields(msg.body))
            elif msg.type == b"Z":
                await client.drain()
                return key

    async def cancel(self, key: pg.CancelKey, db_user: str) -> None:
        """Forward a CancelRequest over TLS; the server answers by closing."""
        reader, writer = await self.connect(db_user)
        try:
            writer.write(pg.build_cancel(key))
            await writer.drain()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(reader.read(1), CONNECT_TIMEOUT)
        finally:
            writer.transport.abort()


async def read_startup_message(reader: asyncio.StreamReader, name: str) -> pg.BackendMessage:
    try:
        return await asyncio.wait_for(pg.read_backend_message(reader), CONNECT_TIMEOUT)
    except pg.ProtocolError as e:
        raise UpstreamError(f"database {name!r}: {e}") from None
    except (OSError, ssl.SSLError, TimeoutError) as e:
        raise UpstreamError(f"database {name!r} failed during startup: {e or 'timeout'}"
                            ) from None
