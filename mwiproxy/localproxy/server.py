"""The local database proxy (`mwibot proxy db`, and the bot's `database-tunnel`).

It listens on loopback (or a unix socket) and carries each client connection to the
cluster proxy over TLS with the database's ALPN protocol, verifying the cluster against
the host CA.

- Tunnel mode: the bot's certificate is presented on that TLS; the client speaks
  plaintext to the local port.
- Non-tunnel mode: no certificate on the outer TLS; the client's own TLS (with its
  sslcert/sslkey) runs inside it. A CancelRequest carries no certificate of its own, so
  the local proxy presents the bot's certificate for it. MongoDB clients (TLS from
  their first byte: `tls=true&tlsCertificateKeyFile=…`) pass through unread likewise.

The ALPN name follows the database's protocol: the `protocol` argument, else the
route in the certificate, else PostgreSQL. PostgreSQL's first packet is parsed (to
answer SSLRequest and CancelRequest, and to turn a refusal into an ErrorResponse); the
other protocols are relayed as they are (in tunnel mode; in non-tunnel mode too for
Redis and MongoDB, whose clients' TLS starts at their first byte: `redis-cli --tls`,
`tls=true`, and MySQL, whose clients upgrade to their own TLS in-protocol with the
cluster). MySQL's server speaks first, so its first answer is awaited before relaying,
and a failure to reach the cluster becomes a MySQL ERR packet; in tunnel mode a Redis
client gets `-ERR <why>`; MongoDB clients are just disconnected (the reason is logged).

Credentials come from a provider read for every new connection; a changed provider
result gives a new TLS context, open connections keep theirs.

The TLS to the cluster is a native TLSStream, so after the first exchange the relay
(`relay/pipe.py`) runs natively in both modes, `-ping` framed (`offer_ping`) or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time

from mwiproxy import _native
from mwiproxy.localproxy.connlog import Connection
from mwiproxy.localproxy.creds import (
    CredentialsError,
    CredentialsProvider,
    TLSCredentials,
    check_usable,
)
from mwiproxy.metrics.localproxy import (
    BAD_REQUEST,
    UPSTREAM_REFUSED,
    LocalProxyMetricsSink,
    NoopLocalProxyMetrics,
    mode_of,
)
from mwiproxy.relay.listen import Listener
from mwiproxy.relay.pipe import Pipe
from mwiproxy.relay.streams import (
    BufferedReader,
    ByteStream,
    FramedStream,
    SocketStream,
    dial_tcp,
)
from mwiproxy.relay.tlsnames import certificate_names
from mwiproxy.wire import alpn, mysql
from mwiproxy.wire import postgres as pg
from mwiproxy.wire import redis as resp
from mwiproxy.wire.addr import (
    HTTPS,
    TCP,
    UNIX,
    join_host_port,
    parse_address,
    parse_listen,
    split_address_list,
)
from mwiproxy.wire.failover import FailoverOrder

__all__ = ["DRAIN_TIMEOUT", "CredentialsError", "LocalProxy",
           "UnsupportedMode", "UpstreamFailed"]

log = logging.getLogger("mwiproxy.localproxy")

DIAL_TIMEOUT = 15.0
FIRST_PACKET_TIMEOUT = 60.0
FIRST_ANSWER_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0
# connections being set up (dial, handshake, first answer) at once; more wait their turn
MAX_CONCURRENT_SETUPS = 64
# protocols whose clients' own TLS (from their first byte) passes through unread in
# non-tunnel mode, terminated by the cluster proxy
PASS_THROUGH = frozenset({"redis", "mongodb", "mysql"})


class UnsupportedMode(Exception):
    """The local proxy cannot serve this protocol in the mode it was asked for."""


class UpstreamFailed(Exception):
    """The cluster proxy could not be reached or refused us; the message says why."""

    def __init__(self, message: str, sqlstate: str = pg.CANNOT_CONNECT) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class UpstreamLost(UpstreamFailed):
    """The cluster process closed or reset the connection before its first answer, with
    no TLS alert: it died (or is going away), so another one is worth a try."""


def _split_proxies(addrs: str) -> dict[str, tuple[str, int]]:
    """`a:3080,b:3080` → {"a:3080": ("a", 3080), …}, in the order given."""
    try:
        out = {}
        for item in split_address_list(addrs):
            proxy = parse_address(item, schemes=(TCP, HTTPS))
            out[join_host_port(proxy.host, proxy.port)] = (proxy.host, proxy.port)
    except ValueError as e:
        raise ValueError(f"invalid proxy address: {e}") from None
    return out


class LocalProxy:
    def __init__(self, *, listen: str, proxy_addr: str, service: str,
                 credentials: CredentialsProvider, tunnel: bool = True,
                 database: str = "", username: str = "", server_name: str = "",
                 origin: str = "the bot's credentials", max_connections: int = 0,
                 offer_ping: bool = True, protocol: str = "", spread: bool = False,
                 metrics: LocalProxyMetricsSink | None = None) -> None:
        if protocol and protocol not in alpn.DATABASE_PROTOCOLS:
            raise ValueError(f"unknown database protocol {protocol!r}")
        self.listen = parse_listen(listen)
        self._upstreams = _split_proxies(proxy_addr)
        # failover (the one that worked last first), or with `spread` new connections
        # take the cluster processes in turn, a failed one last (wire/failover.py)
        self._failover = FailoverOrder(list(self._upstreams), spread=spread)
        self._server_name = server_name
        self.service = service
        self.tunnel = tunnel
        self.database = database
        self.username = username
        self._provider = credentials
        self._origin = origin
        self._last_creds: TLSCredentials | None = None
        self._contexts: dict[bool, tuple[TLSCredentials, _native.TLSContext]] = {}
        self._listener = Listener(self.listen, self._serve, max_connections=max_connections,
                                  what="local proxy connection")
        self._setups = asyncio.Semaphore(MAX_CONCURRENT_SETUPS)
        self._asked_protocol = protocol
        self.protocol = protocol or "postgres"  # settled from the certificate at start
        self.offer_ping = offer_ping
        self.draining = False
        self.mode = mode_of(tunnel)
        self.metrics: LocalProxyMetricsSink = metrics or NoopLocalProxyMetrics()
        self._count_as: tuple[str, ...] = ()  # the relays' counter key (none without metrics)

    @property
    def proxy_host(self) -> str:
        """The cluster process tried first now (the one that worked last)."""
        return self._upstreams[self._failover.preferred][0]

    @property
    def proxy_port(self) -> int:
        return self._upstreams[self._failover.preferred][1]

    def _name_of(self, host: str) -> str:
        """The name the cluster proxy's certificate must carry."""
        return self._server_name or ("localhost" if host in ("127.0.0.1", "::1") else host)

    @property
    def alpn(self) -> str:
        return alpn.DATABASE_PROTOCOLS[self.protocol]

    @property
    def alpn_offer(self) -> list[str]:
        """Offered in this order: the framed name first, the plain one as the fallback."""
        return [alpn.with_ping(self.alpn), self.alpn] if self.offer_ping else [self.alpn]

    @property
    def speaks_postgres(self) -> bool:
        return self.alpn == alpn.POSTGRES

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check the credentials, then listen. CredentialsError says what is wrong."""
        creds = self._credentials()
        self._settle_protocol(creds)
        if self.tunnel:
            self._check_tunnel(creds)
        elif not self.speaks_postgres and self.protocol not in PASS_THROUGH:
            raise UnsupportedMode(
                f"--tunnel is required: database service {self.service!r} is "
                f"{self.protocol}, and only PostgreSQL, MySQL, Redis and MongoDB "
                "clients can bring their own TLS through the local proxy")
        self._listener.start()
        self._count_as = self.metrics.serving(self.service, self.mode, self._expiry)
        log.info("local proxy for %r (%s) listening on %s (%s mode)", self.service,
                 self.protocol, self.address, "tunnel" if self.tunnel else "TLS pass-through")

    def _settle_protocol(self, creds: TLSCredentials) -> None:
        """Without a `protocol` argument, the certificate's route names the protocol."""
        if self._asked_protocol:
            return
        try:
            route = creds.identity.route
        except CredentialsError:  # not ours to judge here: the tunnel check says why
            return
        if route is not None and route.protocol in alpn.DATABASE_PROTOCOLS:
            self.protocol = route.protocol
            self._contexts.clear()

    @property
    def address(self) -> str:
        if self.listen.scheme == UNIX:
            return str(self.listen)
        host, port = self._listener.address
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self.listen.scheme == TCP
        return self._listener.address[1]

    @property
    def active_connections(self) -> int:
        return self._listener.active

    def accept_stats(self) -> _native.AcceptorStats:
        """The acceptor's counters (accepted, handed, accept errors) since start."""
        return self._listener.stats()

    async def serve_forever(self) -> None:
        await self._listener.wait()

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """Stop accepting, let open sessions finish for up to `timeout` s, cut the rest."""
        self.draining = True
        try:
            return await self._listener.drain(timeout)
        finally:
            self.metrics.stopped(self.service)

    async def close(self) -> None:
        self.draining = True
        try:
            await self._listener.drain(0)
        finally:
            self.metrics.stopped(self.service)

    async def reload(self) -> None:
        """SIGHUP: read the credentials again now rather than at the next connection;
        CredentialsError says what is wrong with them (readiness says it too)."""
        self._last_creds = None
        self._contexts.clear()
        ready, reason = self.readiness()
        if not ready:
            raise CredentialsError(reason)
        log.info("SIGHUP: credentials re-read: %s", reason)

    def status(self) -> str:
        ready, reason = self.readiness()
        return (f"local proxy for {self.service!r} on {self.address}: "
                f"{'ready' if ready else 'not ready'}, {reason}")

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): accepting, and credentials present and unexpired. Reads the
        credentials only; never dials the cluster or the database."""
        if self.draining:
            return False, "draining: not accepting new connections"
        try:
            creds = self._credentials()
            if self.tunnel:
                self._check_tunnel(creds)
            else:
                check_usable(creds, self.service, self._origin)
        except CredentialsError as e:
            return False, str(e)
        return True, f"certificate valid until {creds.not_after:%Y-%m-%d %H:%M:%S} UTC"

    def _expiry(self) -> dt.datetime | None:
        """notAfter of the certificate served now (the metrics read it at scrape time)."""
        try:
            return self._credentials().not_after
        except CredentialsError:
            return None

    # -- credentials -------------------------------------------------------------------

    def _credentials(self) -> TLSCredentials:
        """The provider's credentials; the same object while its answer is unchanged, so
        the certificate is parsed once per renewal, not once per connection."""
        try:
            files = TLSCredentials(*self._provider())
        except LookupError as e:  # the bot's holder before its first renewal
            raise CredentialsError(str(e)) from None
        if self._last_creds is None or self._last_creds != files:
            self._last_creds = files
        return self._last_creds

    def _check_tunnel(self, creds: TLSCredentials) -> None:
        check_usable(creds, self.service, self._origin)
        route = creds.identity.route
        assert route is not None
        if alpn.DATABASE_PROTOCOLS.get(route.protocol) != self.alpn:
            raise CredentialsError(f"the certificate in {self._origin} is for a "
                                   f"{route.protocol or 'unknown'} database, not "
                                   f"{self.protocol}", "other")
        for asked, have, what in ((self.username, route.username, "database user"),
                                  (self.database, route.database, "database")):
            if asked and have and asked != have:
                raise CredentialsError(f"the certificate in {self._origin} is for {what} "
                                       f"{have!r}, not {asked!r}", "other")

    def _context(self, with_cert: bool) -> _native.TLSContext:
        creds = self._credentials()
        if with_cert:
            self._check_tunnel(creds)
        cached = self._contexts.get(with_cert)
        if cached is not None and cached[0] == creds:
            return cached[1]
        ctx = _native.TLSContext(False, creds.cert_pem if with_cert else None,
                                 creds.key_pem if with_cert else None, creds.host_ca_pem,
                                 alpn=self.alpn_offer)
        self._contexts[with_cert] = (creds, ctx)
        return ctx

    # -- a connection ------------------------------------------------------------------

    def _connection(self) -> Connection:
        return Connection(self.metrics, self.service, self.mode, self.username, self.database)

    async def _serve(self, sock: socket.socket, _peer: str) -> None:
        client = SocketStream(sock)
        conn = self._connection()
        if not self.speaks_postgres:
            await self._serve_opaque(client, conn)
            return
        reader = BufferedReader(client)
        try:
            first = await asyncio.wait_for(pg.read_first_packet(reader), FIRST_PACKET_TIMEOUT)
        except (pg.ProtocolError, TimeoutError, OSError, asyncio.IncompleteReadError):
            client.close()
            conn.refused(BAD_REQUEST)
            return
        conn.startup(first)
        try:
            async with self._setups:  # bursts queue here, not in the cluster's handshakes
                upstream, answer = await self._dial_and_exchange(
                    self.tunnel or first.is_cancel, conn, first.raw)
        except (CredentialsError, UpstreamFailed) as e:
            log.warning("connection refused locally: %s", e)
            sqlstate = e.sqlstate if isinstance(e, UpstreamFailed) else pg.CANNOT_CONNECT
            with contextlib.suppress(OSError):  # the client may have given up already
                await client.write(pg.error_response(f"mwibot local proxy: {e}", sqlstate))
            client.close()
            _setup_failed(conn, e)
            return
        try:
            await client.write(answer)
            conn.answered()
            if early := reader.leftover():
                await upstream.write(early)
            await self._relay(client, upstream, conn)
        finally:
            upstream.close()  # a no-op once the relay took it over

    async def _relay(self, client: ByteStream, upstream: ByteStream, conn: Connection) -> None:
        pipe = Pipe(client, upstream, count_as=self._count_as or None)
        conn.relaying()
        try:
            await pipe.run()
        finally:  # cut by a drain too: the line says what moved until then
            conn.relayed(pipe.stats)

    async def _serve_opaque(self, client: SocketStream, conn: Connection) -> None:
        """A protocol whose bytes are not parsed here (in tunnel mode; the own TLS of
        Redis and MongoDB clients in non-tunnel mode, which starts at their first byte;
        MySQL's in non-tunnel mode, whose upgrade — SSL Request, then its handshake —
        happens in-protocol with the cluster): dial at once (the client may be waiting
        for the server to speak), then
        relay. Only MySQL's greeting is seen here: for the others the first answer goes
        by in the relay."""
        greeting = b""
        try:
            async with self._setups:
                if self.protocol == "mysql":  # the server speaks first
                    upstream, greeting = await self._dial_and_exchange(self.tunnel, conn, b"")
                else:
                    upstream, _ = await self._dial(self.tunnel, conn)
        except (CredentialsError, UpstreamFailed) as e:
            log.warning("%s connection refused locally: %s", self.protocol, e)
            if self.protocol == "mysql":
                with contextlib.suppress(OSError):
                    await client.write(_mysql_refusal(e))
            elif self.protocol == "redis" and self.tunnel:  # the reply to its first command
                with contextlib.suppress(OSError):
                    await client.write(resp.error_reply(f"ERR mwibot local proxy: {e}"))
            client.close()
            _setup_failed(conn, e)
            return
        try:
            if greeting:
                await client.write(greeting)
                conn.answered()
            await self._relay(client, upstream, conn)
        finally:
            upstream.close()  # a no-op once the relay took it over

    async def _dial_and_exchange(self, with_cert: bool, conn: Connection,
                                 first: bytes) -> tuple[ByteStream, bytes]:
        """Dial, send `first` (if any) and read the first answer. A cluster process that
        dies between the handshake and its answer costs no client: the next address is
        tried with the same first packet (nothing has reached the database yet)."""
        for tries_left in range(len(self._failover) - 1, -1, -1):
            upstream, address = await self._dial(with_cert, conn)
            try:
                if first:
                    return upstream, await self._first_exchange(upstream, first)
                return upstream, await self._first_answer(upstream)
            except UpstreamLost:
                if not tries_left:
                    raise
                self._failover.failed(address)  # a no-op if another caller moved on
                log.warning("the cluster proxy at %s went away before answering; "
                            "trying the next one", address)
        raise AssertionError("unreachable: the last try returns or raises")

    async def _dial(self, with_cert: bool, conn: Connection) -> tuple[ByteStream, str]:
        """TLS to a cluster proxy (and which one); the stream is framed if `-ping` was
        agreed."""
        conn.credentials(self._credentials())  # whose they are, even when refused below
        ctx = self._context(with_cert)
        started = time.monotonic()
        try:
            stream, address = await self._handshake_any(ctx)
        except UpstreamFailed:
            conn.dialed(None)
            raise
        conn.dialed(time.monotonic() - started)
        return self._framed(stream), address

    async def _handshake_any(self, ctx: _native.TLSContext) -> tuple[_native.TLSStream, str]:
        """The cluster addresses in failover order until one completes a handshake;
        UpstreamFailed says why each failed."""
        reasons = []
        for address in self._failover.order():
            try:
                stream = await self._handshake(ctx, *self._upstreams[address])
            except UpstreamFailed as e:
                self._failover.failed(address)
                reasons.append(e)
                if len(self._upstreams) > 1:
                    log.warning("%s; trying the next cluster address", e)
                continue
            self._failover.worked(address)
            return stream, address
        if len(reasons) == 1:
            raise reasons[0]
        raise UpstreamFailed("no cluster proxy could be reached: "
                             + "; ".join(str(e) for e in reasons))

    async def _handshake(self, ctx: _native.TLSContext, host: str,
                         port: int) -> _native.TLSStream:
        """TCP and TLS to one cluster proxy (UpstreamFailed says why not)."""
        try:
            return await asyncio.wait_for(self._tls_dial(ctx, host, port), DIAL_TIMEOUT)
        except _native.TLSError as e:
            if str(e).startswith("certificate verify failed"):
                raise UpstreamFailed(f"the cluster proxy at {join_host_port(host, port)} "
                                     f"is not trusted: {e}") from None
            raise UpstreamFailed(_unreachable(host, port, e)) from None
        except (OSError, TimeoutError) as e:
            raise UpstreamFailed(_unreachable(host, port, e)) from None

    def _framed(self, stream: _native.TLSStream) -> ByteStream:
        framed = len(self.alpn_offer) > 1 and stream.alpn() == self.alpn_offer[0]
        return FramedStream(stream) if framed else stream

    async def _tls_dial(self, ctx: _native.TLSContext, host: str,
                        port: int) -> _native.TLSStream:
        loop = asyncio.get_running_loop()
        raw = await dial_tcp(host, port)
        name = self._name_of(host)
        stream = _native.TLSStream(loop, ctx, raw.detach(), server_hostname=name)
        try:
            await stream.handshake()
            if not certificate_names(stream.peer_cert_der(), name):
                raise UpstreamFailed(
                    f"the cluster proxy at {join_host_port(host, port)} is not "
                    f"trusted: its certificate is not valid for {name!r}")
        except BaseException:
            stream.close()
            raise
        return stream

    async def _first_exchange(self, upstream: ByteStream, first: bytes) -> bytes:
        """Send the first packet and wait for the first answer before relaying, so a
        refusal of our certificate (a TLS 1.3 alert after the handshake) reaches the
        client as a PostgreSQL error instead of a dropped connection."""
        try:
            await upstream.write(first)
        except OSError as e:
            upstream.close()
            lost = isinstance(e, ConnectionError) and not isinstance(e, _native.TLSError)
            failed = UpstreamLost if lost else UpstreamFailed
            raise failed(self._refused(_why(e)), pg.INVALID_AUTHORIZATION) from None
        return await self._first_answer(upstream)

    async def _first_answer(self, upstream: ByteStream) -> bytes:
        """The cluster's first bytes; UpstreamFailed (and upstream closed) if none come."""
        lost = False
        try:
            answer = await asyncio.wait_for(upstream.read(65536), FIRST_ANSWER_TIMEOUT)
            reason, lost = ("", False) if answer else ("closed before answering", True)
        except _native.TLSError as e:  # a TLS alert: a refusal
            answer, reason = b"", _why(e)
        except (OSError, TimeoutError) as e:
            answer, reason, lost = b"", _why(e), isinstance(e, ConnectionError)
        if not answer:
            upstream.close()
            failed = UpstreamLost if lost else UpstreamFailed
            raise failed(self._refused(reason), pg.INVALID_AUTHORIZATION)
        return answer

    def _refused(self, reason: str) -> str:
        return (f"the cluster proxy refused the connection ({reason}); check that "
                f"{self._origin} hold a valid certificate of this cluster")


def _setup_failed(conn: Connection, error: CredentialsError | UpstreamFailed) -> None:
    """Refused (our credentials, or the cluster said no) or failed (unreachable)."""
    if isinstance(error, CredentialsError):
        conn.refused(error.reason)
    elif error.sqlstate == pg.INVALID_AUTHORIZATION:
        conn.refused(UPSTREAM_REFUSED)
    else:
        conn.failed()


def _mysql_refusal(error: Exception) -> bytes:
    """A local failure as the ERR packet a MySQL client expects in place of the greeting
    (server error codes only: the MariaDB client reads a client code such as 2003 in a
    server's ERR packet as a malformed packet and drops the message)."""
    refused = isinstance(error, CredentialsError) or (
        isinstance(error, UpstreamFailed) and error.sqlstate == pg.INVALID_AUTHORIZATION)
    code, state = ((mysql.ER_ACCESS_DENIED, mysql.ACCESS_DENIED_STATE) if refused
                   else (mysql.ER_UNKNOWN_ERROR, mysql.GENERAL_ERROR_STATE))
    return mysql.err_packet(code, state, f"mwibot local proxy: {error}")


def _unreachable(host: str, port: int, e: BaseException) -> str:
    return f"cannot reach the cluster proxy at {join_host_port(host, port)}: {_why(e)}"


def _why(error: BaseException) -> str:
    return str(error) or ("timeout" if isinstance(error, TimeoutError)
                          else type(error).__name__)
