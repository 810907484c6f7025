"""The MySQL/MariaDB engine: signs in to the database as the session's database user with
a short-lived client certificate (CN=<user>, `REQUIRE SUBJECT` on the server side) and
no password.

TCP → the server's greeting → SSL Request → TLS with the user's certificate →
HandshakeResponse41 (the user, the database, the client's capability flags masked to
what the server, the client and the proxy all support, an empty auth response) → the
server's OK, or its ERR (UpstreamRefused, to be passed to the client as it is). An
AuthSwitchRequest is answered with an empty auth response too (a user with no password
signs in so with any plugin); a demand for a real password is refused with the reason.

Every step is bounded: one CONNECT_TIMEOUT for the whole sign-in, and each packet of it
capped (wire/mysql_handshake.HANDSHAKE_CAP).
"""

from __future__ import annotations

import asyncio
import socket
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
from mwiproxy.wire import mysql
from mwiproxy.wire import mysql_handshake as hs

PROTOCOLS = ("mysql",)
MAX_AUTH_ROUNDS = 4
FAST_AUTH_OK = b"\x01\x03"  # caching_sha2_password: the cached check passed


class UpstreamRefused(Exception):
    """The database refused the sign-in: `payload` is its ERR_Packet, for the client."""

    def __init__(self, payload: bytes) -> None:
        err = mysql.parse_err(payload)
        super().__init__(f"database refused: {err.message} ({err.code})")
        self.payload = payload


@dataclass
class Upstream:
    stream: _native.TLSStream
    ok: bytes  # the server's OK_Packet payload (its status flags go to the client)
    leftover: bytes  # read past the OK: the server's, to go to the client first


class MySQLEngine:
    def __init__(self, db: DatabaseConfig, signer: ClientCertSigner,
                 metrics: NoopProxyMetrics | None = None) -> None:
        if db.protocol not in PROTOCOLS:
            raise ValueError(f"database {db.name!r} speaks {db.protocol}, not MySQL")
        self.db = db
        self.name = db.name
        self.tls = UpstreamTLS(db, signer)
        self.metrics = metrics or NoopProxyMetrics()
        # the server's version as its last greeting gave it: the front end greets
        # clients with it (None until the first dial)
        self.server_version: str | None = None

    async def start(self, db_user: str, db_name: str, client_caps: int, *,
                    charset: int = hs.UTF8MB4_GENERAL_CI, grant: str = "") -> Upstream:
        """Sign in as db_user to db_name (empty: none). UpstreamError: the database is
        unreachable or cannot be signed in to this way (the message says why);
        UpstreamRefused: the database said no (its ERR_Packet). `grant`: in an agent,
        the session grant the proxy sent, for a new certificate."""
        started = time.monotonic()
        try:
            up = await asyncio.wait_for(self._sign_in(db_user, db_name, client_caps,
                                                      charset, grant), CONNECT_TIMEOUT)
        except UpstreamRefused:
            self.metrics.dial(self.name, "mysql", time.monotonic() - started)
            raise
        except (OSError, TimeoutError, UpstreamError, mysql.ProtocolError,
                asyncio.IncompleteReadError) as e:
            self.metrics.dial(self.name, "mysql", None)
            raise self._dial_error(e) from None
        self.metrics.dial(self.name, "mysql", time.monotonic() - started)
        return up

    def _dial_error(self, e: Exception) -> UpstreamError:
        where = f"database {self.name!r} at {self.db.uri}"
        if isinstance(e, UpstreamError):
            return e
        if isinstance(e, _native.TLSError) and str(e).startswith("certificate verify failed"):
            return UpstreamError(f"the certificate of {where} is not trusted: {e}")
        if isinstance(e, mysql.ProtocolError):
            return UpstreamError(f"{where}: {e}")
        if isinstance(e, asyncio.IncompleteReadError):
            return UpstreamError(f"{where} closed the connection during sign-in")
        return UpstreamError(f"cannot reach {where}: {e or 'timeout'}")

    async def _greeting(self, sock: socket.socket) -> tuple[hs.Greeting, bytes]:
        """The server's greeting (bounded) and any bytes after it."""
        loop = asyncio.get_running_loop()
        buf = b""
        while True:
            try:
                split = mysql.split_packet(buf, hs.HANDSHAKE_CAP)
            except mysql.ProtocolError:
                raise UpstreamError(f"database {self.name!r}: its greeting is over "
                                    f"{hs.HANDSHAKE_CAP} bytes") from None
            if split is not None:
                break
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise UpstreamError(f"database {self.name!r} at {self.db.uri} closed the "
                                    "connection before greeting")
            buf += data
        pkt, rest = split
        if pkt.payload[:1] == b"\xff":  # e.g. "Host … is blocked", too many connections
            err = mysql.parse_err(pkt.payload)
            raise UpstreamError(f"database {self.name!r} refused the connection: "
                                f"{err.message} ({err.code})")
        return hs.parse_greeting(pkt.payload), rest

    async def _sign_in(self, db_user: str, db_name: str, client_caps: int,
                       charset: int, grant: str) -> Upstream:
        loop = asyncio.get_running_loop()
        sock = await dial_tcp(*self.db.host_port)
        stream: _native.TLSStream | None = None
        try:
            greeting, rest = await self._greeting(sock)
            if rest:
                raise UpstreamError(f"database {self.name!r} spoke out of turn")
            self.server_version = greeting.server_version
            missing = hs.SERVER_NEEDS & ~greeting.capabilities
            if missing:
                what = "TLS (ssl-cert, ssl-key, ssl-ca)" if missing & hs.SSL else \
                    "protocol 4.1"
                raise UpstreamError(f"database {self.name!r} at {self.db.uri} does not "
                                    f"offer {what}: mwiproxy signs in with certificates")
            caps = (client_caps & hs.PROXY_CAPS & greeting.capabilities) | hs.SERVER_NEEDS \
                | hs.LONG_PASSWORD | (greeting.capabilities & hs.PLUGIN_AUTH)
            caps = caps | hs.CONNECT_WITH_DB if db_name else caps & ~hs.CONNECT_WITH_DB
            await loop.sock_sendall(sock, mysql.packet(hs.build_ssl_request(caps, charset), 1))
            ctx = await self.tls.context_for(db_user, grant)
            stream = await self.tls.start_tls(sock, ctx)  # owns the socket, even failing
            plugin = greeting.auth_plugin or hs.NATIVE_PASSWORD
            response = hs.HandshakeResponse(caps, hs.MAX_PACKET, charset, db_user, b"",
                                            db_name, plugin)
            await stream.write(mysql.packet(hs.build_handshake_response(response), 2))
            reader = BufferedReader(stream)
            ok = await self._auth_answer(reader, stream)
            return Upstream(stream, ok, reader.leftover())
        except BaseException:
            if stream is not None:
                stream.close()
            else:
                sock.close()
            raise

    async def _auth_answer(self, reader: BufferedReader, stream: _native.TLSStream
                           ) -> bytes:
        for _ in range(MAX_AUTH_ROUNDS):
            seq, payload = await hs.read_packet(reader)
            head = payload[:1]
            if head == b"\x00":
                return payload
            if head == b"\xff":
                raise UpstreamRefused(payload)
            if head == b"\xfe":  # AuthSwitchRequest: no password, whatever the plugin
                hs.parse_auth_switch(payload)
                await stream.write(mysql.packet(b"", (seq + 1) & 0xFF))
            elif payload == FAST_AUTH_OK:
                continue
            else:
                raise UpstreamError(
                    f"database {self.name!r} asked for a password (auth data "
                    f"{payload[:8]!r}); mwiproxy signs in with certificates: create the "
                    "user with REQUIRE SUBJECT '/CN=<user>' and no password")
        raise UpstreamError(f"database {self.name!r}: too many authentication rounds")
