"""The PostgreSQL engine (also CockroachDB): dials the real database with TLS, signs in
as the requested database user with a certificate from the database-client CA, replays
the client's startup message and passes the server's answer back until ReadyForQuery.

After that the caller relays bytes untouched. The BackendKeyData the server sent is
returned so the cluster proxy can route a later CancelRequest to this database only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mwiproxy import _native
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.base import (
    CONNECT_TIMEOUT,
    ClientCertSigner,
    UpstreamError,
    UpstreamTLS,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.metrics.cluster import NoopProxyMetrics
from mwiproxy.relay.streams import BufferedReader, ByteStream, dial_tcp
from mwiproxy.wire import postgres as pg

PROTOCOLS = ("postgres", "cockroachdb")


class UpstreamRefused(Exception):
    """The database answered the startup with an ErrorResponse (already sent on)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "refused"))
        self.fields = fields


@dataclass
class Upstream:
    stream: _native.TLSStream
    cancel_key: pg.CancelKey | None


class EarlyDial:
    """A database dial (TCP + SSLRequest) running while the access check decides; the
    socket is either taken by the engine or closed by `cancel`."""

    # how long the check waits at most for the SSLRequest to be sent: a tuning bound,
    # not a limit on anything (the dial goes on either way)
    HEAD_START = 0.1

    def __init__(self, dial: Callable[[asyncio.Event], Awaitable[socket.socket]]) -> None:
        self._answered = asyncio.Event()
        self._task = asyncio.ensure_future(dial(self._answered))

    async def head_start(self) -> None:
        """Let the dial run until the SSLRequest is sent: the database then forks the
        session's backend and answers while the check runs."""
        if self._answered.is_set() or self._task.done():
            return
        sent = asyncio.ensure_future(self._answered.wait())
        try:
            await asyncio.wait({sent, self._task}, timeout=self.HEAD_START)
        finally:
            sent.cancel()

    async def socket(self) -> socket.socket:
        return await self._task

    def cancel(self) -> None:
        """The check refused: close the socket wherever the dial is (a dial cancelled
        mid-way closes its own socket)."""
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled() and self._task.exception() is None:
            self._task.result().close()
        else:  # a dial that failed: its error is of no interest any more
            self._task.cancelled() or self._task.exception()


class Engine(Protocol):
    """What the PostgreSQL front end needs of an engine: in-process (`PostgresEngine`)
    or in a separate agent (`engines/remote.py`)."""

    name: str

    async def start(self, startup: bytes, db_user: str, client: ByteStream, *,
                    caller: Identity, db_name: str = "", remote: str = "",
                    session_id: int = 0) -> Upstream: ...

    async def cancel(self, key: pg.CancelKey, db_user: str, *, caller: Identity) -> None: ...


class PostgresEngine:
    def __init__(self, db: DatabaseConfig, signer: ClientCertSigner,
                 metrics: NoopProxyMetrics | None = None) -> None:
        if db.protocol not in PROTOCOLS:
            raise ValueError(f"database {db.name!r} speaks {db.protocol}, not PostgreSQL")
        self.db = db
        self.tls = UpstreamTLS(db, signer)
        self.metrics = metrics or NoopProxyMetrics()

        self.name = db.name

    def dial_early(self) -> EarlyDial:
        """Start the TCP connect and the SSLRequest now (they carry no credentials and
        nothing of the client's), to be finished by `start(…, early=)` once the access
        check passed, or closed by EarlyDial.cancel if it refused."""
        return EarlyDial(self._dial)

    async def connect(self, db_user: str | None, grant: str = "",
                      early: EarlyDial | None = None) -> _native.TLSStream:
        """A TLS connection to the database, authenticated as db_user (None: with no
        client certificate), before startup. `grant`: see UpstreamTLS.context_for;
        `early`: the TCP connection dial_early started."""
        started = time.monotonic()
        try:
            stream = await asyncio.wait_for(self._connect(db_user, grant, early),
                                            CONNECT_TIMEOUT)
        except (OSError, TimeoutError, UpstreamError) as e:  # TLSError is an OSError
            self.metrics.dial(self.name, "postgres", None)
            raise self._dial_error(e) from None
        self.metrics.dial(self.name, "postgres", time.monotonic() - started)
        return stream

    def _dial_error(self, e: Exception) -> Exception:
        """A failed dial in the operator's words."""
        if isinstance(e, UpstreamError):
            return e
        if isinstance(e, _native.TLSError):
            if str(e).startswith("certificate verify failed"):
                return UpstreamError(f"the certificate of database {self.name!r} "
                                     f"({self.db.uri}) is not trusted: {e}")
            return UpstreamError(f"cannot reach database {self.name!r} at {self.db.uri}: {e}")
        return UpstreamError(
            f"cannot reach database {self.name!r} at {self.db.uri}: {e or 'timeout'}")

    async def _dial(self, answered: asyncio.Event | None = None) -> socket.socket:
        """TCP to the database and its 'S' to an SSLRequest; `answered` is set once only
        the database's answer is awaited."""
        loop = asyncio.get_running_loop()
        sock = await dial_tcp(*self.db.host_port)
        try:
            await loop.sock_sendall(sock, pg.ssl_request())
            if answered is not None:
                answered.set()
            if await loop.sock_recv(sock, 1) != pg.SSL_YES:
                raise UpstreamError(f"database {self.name!r} at {self.db.uri} does not accept "
                                    "TLS connections (ssl = on is needed)")
        except BaseException:
            sock.close()
            raise
        return sock

    async def _connect(self, db_user: str | None, grant: str,
                       early: EarlyDial | None = None) -> _native.TLSStream:
        sock = await (early.socket() if early is not None else self._dial())
        try:
            ctx = self.tls.anonymous_context() if db_user is None else \
                await self.tls.context_for(db_user, grant)
        except BaseException:
            sock.close()
            raise
        return await self.tls.start_tls(sock, ctx)

    async def start(self, startup: bytes, db_user: str, client: ByteStream, *,
                    caller: Identity | None = None, db_name: str = "", remote: str = "",
                    session_id: int = 0, grant: str = "",
                    early: EarlyDial | None = None) -> Upstream:
        """Sign in with the client's startup message; the server's answer up to and
        including ReadyForQuery goes to `client`. (The session details are for engines
        that pass the session on; this one signs in as db_user and needs nothing else.
        `grant`: in an agent, the session grant the proxy sent, for a new certificate;
        `early`: a dial_early of this engine, started while the access check ran.)"""
        stream = await self.connect(db_user, grant, early)
        try:
            await stream.write(startup)
            key = await self._pass_startup_answer(BufferedReader(stream), client)
        except BaseException:
            stream.close()
            raise
        return Upstream(stream, key)

    async def _pass_startup_answer(self, reader: BufferedReader, client: ByteStream
                                   ) -> pg.CancelKey | None:
        key, batch = None, bytearray()
        while True:
            msg = await read_startup_message(reader, self.name)
            if msg.type == b"R" and msg.auth_code != 0:
                raise UpstreamError(
                    f"database {self.name!r} asked for password authentication (method "
                    f"{msg.auth_code}); mwiproxy signs in with certificates: use `hostssl … "
                    "cert` in pg_hba.conf")
            batch += msg.raw
            if msg.type == b"K":
                key = msg.cancel_key
            elif msg.type == b"E":
                await client.write(bytes(batch))
                raise UpstreamRefused(pg.parse_error_fields(msg.body))
            elif msg.type == b"Z":  # the server says nothing more until the client asks
                await client.write(bytes(batch + reader.leftover()))
                return key

    async def cancel(self, key: pg.CancelKey, db_user: str, *,
                     caller: Identity | None = None) -> None:
        """Forward a CancelRequest over TLS; the server answers by closing. No client
        certificate: PostgreSQL checks only the cancel key, and an agent has no session
        grant for a cancel."""
        stream = await self.connect(None)
        try:
            await stream.write(pg.build_cancel(key))
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(stream.read(1), CONNECT_TIMEOUT)
        finally:
            stream.close()


async def read_startup_message(reader: BufferedReader, name: str) -> pg.BackendMessage:
    try:
        return await asyncio.wait_for(pg.read_backend_message(reader), CONNECT_TIMEOUT)
    except pg.ProtocolError as e:
        raise UpstreamError(f"database {name!r}: {e}") from None
    except (OSError, TimeoutError) as e:
        raise UpstreamError(f"database {name!r} failed during startup: {e or 'timeout'}"
                            ) from None
