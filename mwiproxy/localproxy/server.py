"""The local database proxy (`mwibot proxy db`, and the bot's `database-tunnel`).

It listens on loopback (or a unix socket) and carries each client connection to the
cluster proxy over TLS with the database's ALPN protocol, verifying the cluster against
the host CA.

- Tunnel mode: the bot's certificate is presented on that TLS; the client speaks
  plaintext PostgreSQL to the local port.
- Non-tunnel mode: no certificate on the outer TLS; the client's own TLS (with its
  sslcert/sslkey) runs inside it. A CancelRequest carries no certificate of its own, so
  the local proxy presents the bot's certificate for it.

Credentials come from a provider read for every new connection; a changed provider
result gives a new TLS context, open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
from dataclasses import dataclass

from mwiproxy.identity.tlsctx import client_context
from mwiproxy.localproxy.creds import (
    CredentialsError,
    CredentialsProvider,
    TLSCredentials,
    check_usable,
)
from mwiproxy.relay.pipe import Pipe
from mwiproxy.wire import alpn
from mwiproxy.wire import postgres as pg

log = logging.getLogger("mwiproxy.localproxy")

DIAL_TIMEOUT = 15.0
FIRST_PACKET_TIMEOUT = 60.0
UNIX_PREFIX = "unix://"
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamFailed(Exception):
    """The cluster proxy could not be reached or refused us; the message says why."""


@dataclass(frozen=True)
class ListenAddr:
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str = ""

    @classmethod
    def parse(cls, text: str) -> ListenAddr:
        if text.startswith(UNIX_PREFIX):
            path = text[len(UNIX_PREFIX):]
            if not path.startswith("/"):
                raise ValueError(f"{text!r}: a unix socket path must be absolute")
            return cls(unix_path=path)
        host, sep, port = text.removeprefix("tcp://").rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{text!r} is not host:port, tcp://host:port or unix:///path")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))


def _split_proxy(addr: str) -> tuple[str, int]:
    host, sep, port = addr.removeprefix("tcp://").removeprefix("https://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"proxy address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


class LocalProxy:
    def __init__(self, *, listen: str, proxy_addr: str, service: str,
                 credentials: CredentialsProvider, tunnel: bool = True,
                 database: str = "", username: str = "", server_name: str = "",
                 origin: str = "the bot's credentials") -> None:
        self.listen = ListenAddr.parse(listen)
        self.proxy_host, self.proxy_port = _split_proxy(proxy_addr)
        self.server_name = server_name or (
            "localhost" if self.proxy_host in ("127.0.0.1", "::1") else self.proxy_host)
        self.service = service
        self.tunnel = tunnel
        self.database = database
        self.username = username
        self._provider = credentials
        self._origin = origin
        self._contexts: dict[bool, tuple[TLSCredentials, ssl.SSLContext]] = {}
        self._server: asyncio.Server | None = None
        self.alpn = alpn.POSTGRES

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check the credentials, then listen. CredentialsError says what is wrong."""
        creds = self._credentials()
        if self.tunnel:
            self._check_tunnel(creds)
        if self.listen.unix_path:
            self._server = await self._listen_unix(self.listen.unix_path)
        else:
            self._server = await asyncio.start_server(
                self._serve, self.listen.host, self.listen.port, backlog=1024,
                reuse_address=True)
        log.info("local proxy for %r listening on %s (%s mode)", self.service, self.address,
                 "tunnel" if self.tunnel else "TLS pass-through")

    async def _listen_unix(self, path: str) -> asyncio.Server:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        server = await asyncio.start_unix_server(self._serve, path, backlog=1024)
        os.chmod(path, 0o600)
        return server

    @property
    def address(self) -> str:
        if self.listen.unix_path:
            return f"unix://{self.listen.unix_path}"
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None and not self.listen.unix_path
        return int(self._server.sockets[0].getsockname()[1])

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.wait_closed()

    # -- credentials -------------------------------------------------------------------

    def _credentials(self) -> TLSCredentials:
        try:
            return TLSCredentials(*self._provider())
        except LookupError as e:  # the bot's holder before its first renewal
            raise CredentialsError(str(e)) from None

    def _check_tunnel(self, creds: TLSCredentials) -> None:
        check_usable(creds, self.service, self._origin)
        route = creds.identity.route
        assert route is not None
        for asked, have, what in ((self.username, route.username, "database user"),
                                  (self.database, route.database, "database")):
            if asked and have and asked != have:
                raise CredentialsError(f"the certificate in {self._origin} is for {what} "
                                       f"{have!r}, not {asked!r}")

    def _context(self, with_cert: bool) -> ssl.SSLContext:
        creds = self._credentials()
        if with_cert:
            self._check_tunnel(creds)
        cached = self._contexts.get(with_cert)
        if cached is not None and cached[0] == creds:
            return cached[1]
        ctx = client_context(creds.host_ca_pem, creds.cert_pem if with_cert else None,
                             creds.key_pem if with_cert else None, alpn=[self.alpn])
        self._contexts[with_cert] = (creds, ctx)
        return ctx

    # -- a connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        try:
            first = await asyncio.wait_for(pg.read_first_packet(reader), FIRST_PACKET_TIMEOUT)
            upstream = await self._dial(with_cert=self.tunnel or first.is_cancel)
        except (pg.ProtocolError, TimeoutError, OSError):
            writer.transport.abort()
            return
        except (CredentialsError, UpstreamFailed) as e:
            log.warning("connection refused locally: %s", e)
            writer.write(pg.error_response(f"mwibot local proxy: {e}", pg.CANNOT_CONNECT))
            writer.close()
            return
        await self._relay((reader, writer), upstream, first.raw)

    async def _dial(self, with_cert: bool) -> Stream:
        ctx = self._context(with_cert)
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                self.proxy_host, self.proxy_port, ssl=ctx, server_hostname=self.server_name,
                ssl_handshake_timeout=DIAL_TIMEOUT), DIAL_TIMEOUT)
        except ssl.SSLCertVerificationError as e:
            raise UpstreamFailed(f"the cluster proxy at {self.proxy_host}:{self.proxy_port} "
                                 f"is not trusted: {e.verify_message}") from None
        except (OSError, ssl.SSLError, TimeoutError) as e:
            raise UpstreamFailed(f"cannot reach the cluster proxy at {self.proxy_host}:"
                                 f"{self.proxy_port}: {e or 'timeout'}") from None

    async def _relay(self, client: Stream, upstream: Stream, first: bytes) -> None:
        """Send the first packet and wait for the first answer before relaying, so a
        refusal of our certificate (a TLS 1.3 alert after the handshake) reaches the
        client as a PostgreSQL error instead of a dropped connection."""
        upstream[1].write(first)
        try:
            answer = await upstream[0].read(65536)
            reason = "" if answer else "closed before answering"
        except (ssl.SSLError, OSError) as e:
            answer, reason = b"", getattr(e, "reason", None) or str(e)
        if not answer:
            client[1].write(pg.error_response(
                f"mwibot local proxy: the cluster proxy refused the connection ({reason}); "
                f"check that {self._origin} hold a valid certificate of this cluster",
                pg.INVALID_AUTHORIZATION))
            client[1].close()
            upstream[1].transport.abort()
            return
        client[1].write(answer)
        await Pipe(client, upstream).run()
