"""What every database engine shares: how it proves itself to the database (a short-lived
client certificate per database user from the database-client CA, cached) and how it
checks the database's server certificate (the configured TLS mode).

Who signs those client certificates is a `ClientCertSigner`: the cluster's own CA when
the engine runs inside the cluster (`LocalSigner`), the auth API when it runs in a
separate `mwiproxy start --roles=db` agent (`mwiproxy.dbagent`).
"""

from __future__ import annotations

import datetime as dt
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

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta
                             ) -> x509.Certificate: ...


class LocalSigner:
    """The cluster's own database-client CA (engines running inside the cluster)."""

    def __init__(self, cas: AuthoritySet) -> None:
        self._cas = cas

    @property
    def db_ca_pem(self) -> bytes:
        return self._cas["db"].cert_pem

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta
                             ) -> x509.Certificate:
        return self._cas["db_client"].sign_database_user(db_user, public_key, ttl)


@dataclass
class _Cached:
    ctx: _native.TLSContext
    renew_at: float


class UpstreamTLS:
    """Client TLS contexts towards one database, one per database user, reused until the
    user's certificate is near expiry."""

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

    async def context_for(self, db_user: str) -> _native.TLSContext:
        cached = self._cache.get(db_user)
        if cached is None or self._clock() >= cached.renew_at:
            cached = await self._issue(db_user)
            self._cache[db_user] = cached
        return cached.ctx

    async def _issue(self, db_user: str) -> _Cached:
        key = generate_private_key()
        cert = await self._signer.sign_db_client(db_user, key.public_key(), self._ttl)
        server_ca = self._load_server_ca()  # read per certificate: follows a CA change
        verify = _native.VERIFY_NONE if server_ca is None else _native.VERIFY_REQUIRED
        ctx = _native.TLSContext(False, cert_pem(cert), private_key_pem(key),
                                 server_ca, verify=verify)
        renew_at = cert.not_valid_after_utc.timestamp() - RENEW_BEFORE.total_seconds()
        return _Cached(ctx, max(renew_at, self._clock() + 1))


def check_server_name(der: bytes | None, name: str) -> None:
    """verify-full: the (already chain-verified) server certificate must name `name`."""
    if not certificate_names(der, name):
        raise UpstreamError(f"certificate verify failed: the server certificate is not "
                            f"valid for {name!r}")
