"""What every database engine shares: how it proves itself to the database (a short-lived
client certificate per database user from the database-client CA, cached) and how it
checks the database's server certificate (the configured TLS mode).

Who signs those client certificates is a `ClientCertSigner`: the cluster's own CA when
the engine runs inside the cluster (`LocalSigner`), the auth API when it runs in a
separate `mwiproxy start --roles=db` agent (`mwiproxy.dbagent`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from mwiproxy import _native
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.identity.authorities import (
    AuthoritySet,
    PublicKey,
    cert_pem,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.relay.tlsnames import certificate_names

USER_CERT_TTL = dt.timedelta(hours=1)
RENEW_BEFORE = dt.timedelta(minutes=10)
CONNECT_TIMEOUT = 10.0


class UpstreamError(Exception):
    """The database could not be reached or refused the engine; the message says why."""


class ClientCertSigner(Protocol):
    """Issues the certificates an engine shows a database, and names the CA that signs
    the databases' own server certificates."""

    @property
    def db_ca_pem(self) -> bytes: ...

    @property
    def trust_epoch(self) -> int:
        """Changes whenever a CA rotates: cached contexts are then built anew."""
        ...

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta,
                             *, service: str = "", grant: str = "") -> x509.Certificate:
        """`service` is the database; `grant` the session grant an agent was sent with
        the session (the cluster signs for an agent only with one; see
        `auth/agent_grants.py`)."""
        ...


class LocalSigner:
    """The cluster's own database-client CA (engines running inside the cluster)."""

    def __init__(self, cas: AuthoritySet) -> None:
        self._cas = cas

    @property
    def db_ca_pem(self) -> bytes:
        return self._cas["db"].cert_pem

    @property
    def trust_epoch(self) -> int:
        return self._cas.epoch

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta,
                             *, service: str = "", grant: str = "") -> x509.Certificate:
        # in the cluster's own process: the proxy authorized the session just now
        return self._cas["db_client"].sign_database_user(db_user, public_key, ttl)


@dataclass
class _Cached:
    ctx: _native.TLSContext
    renew_at: float
    epoch: int  # the signer's trust_epoch when built: a CA rotation rebuilds it


class UpstreamTLS:
    """Client TLS contexts towards one database, one per database user, reused until the
    user's certificate is near expiry. A context would resume its sessions, and a new
    certificate or CA epoch means a new context (so no session outlives its certificate);
    PostgreSQL itself turns tickets and its session cache off, so that hop never resumes
    (tests/integration/test_postgres_tls_sessions.py)."""

    def __init__(self, db: DatabaseConfig, signer: ClientCertSigner, *,
                 ttl: dt.timedelta = USER_CERT_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._signer = signer
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    def _load_server_ca(self) -> bytes | None:
        if self._db.tls.mode == "insecure":
            return None
        if self._db.tls.ca_file:
            return Path(self._db.tls.ca_file).read_bytes()
        return self._signer.db_ca_pem

    @property
    def server_hostname(self) -> str | None:
        """The name checked against the server certificate (verify-full only)."""
        if self._db.tls.mode != "verify-full":
            return None
        return self._db.tls.server_name or self._db.host_port[0]

    async def start_tls(self, sock: socket.socket, ctx: _native.TLSContext
                        ) -> _native.TLSStream:
        """TLS over a connected socket to the database with `ctx`: the handshake and,
        in verify-full, the server's name. The socket is the stream's from here: closed
        with it when this fails."""
        name = self.server_hostname
        stream = _native.TLSStream(asyncio.get_running_loop(), ctx, sock.detach(),
                                   server_hostname=name)
        try:
            await stream.handshake()
            if name is not None:
                check_server_name(stream.peer_cert_der(), name)
        except BaseException:
            stream.close()
            raise
        return stream

    async def context_for(self, db_user: str, grant: str = "") -> _native.TLSContext:
        """A context signing in as db_user; `grant` (a session grant, in an agent) is
        spent only when a new certificate is needed."""
        cached = self._cache.get(db_user)
        if (cached is None or self._clock() >= cached.renew_at
                or cached.epoch != self._signer.trust_epoch):
            cached = await self._issue(db_user, grant)
            self._cache[db_user] = cached
        return cached.ctx

    def anonymous_context(self) -> _native.TLSContext:
        """A context with no client certificate, for what needs no database user (a
        PostgreSQL CancelRequest: the server checks only the cancel key)."""
        server_ca = self._load_server_ca()
        verify = _native.VERIFY_NONE if server_ca is None else _native.VERIFY_REQUIRED
        return _native.TLSContext(False, None, None, server_ca, verify=verify)

    async def _issue(self, db_user: str, grant: str) -> _Cached:
        key = generate_private_key()
        cert = await self._signer.sign_db_client(db_user, key.public_key(), self._ttl,
                                                 service=self._db.name, grant=grant)
        epoch = self._signer.trust_epoch
        server_ca = self._load_server_ca()  # read per certificate: follows a CA change
        verify = _native.VERIFY_NONE if server_ca is None else _native.VERIFY_REQUIRED
        ctx = _native.TLSContext(False, cert_pem(cert), private_key_pem(key),
                                 server_ca, verify=verify)
        # renewed a margin before expiry: RENEW_BEFORE, or a fifth of a short certificate's
        # life (an agent's last minutes, auth/agents.py MAX_DB_CLIENT_TTL)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        margin = min(RENEW_BEFORE, life / 5)
        renew_at = (cert.not_valid_after_utc - margin).timestamp()
        return _Cached(ctx, max(renew_at, self._clock() + 1), epoch)


def check_server_name(der: bytes | None, name: str) -> None:
    """verify-full: the (already chain-verified) server certificate must name `name`."""
    if not certificate_names(der, name):
        raise UpstreamError(f"certificate verify failed: the server certificate is not "
                            f"valid for {name!r}")
