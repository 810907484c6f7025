"""Where the local proxy gets its certificate, and the checks made before it is used.

A provider is any callable returning the current (cert_pem, key_pem, host_ca_pem): the
bot hands in its in-memory holder for `database-tunnel` services; `mwibot proxy` reads
the files a bot output keeps renewed, re-reading them when they change on disk.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509

from mwiproxy.identity.bundle import HOST_CA, KEY, TLS_CERT, BundleError, read_files
from mwiproxy.identity.certs import Identity, identity_from_certificate

CredentialsProvider = Callable[[], tuple[bytes, bytes, bytes]]
FILES = [TLS_CERT, KEY, HOST_CA]


class CredentialsError(Exception):
    """Credentials missing, unreadable, expired or for another database; `reason` is the
    refusal reason of the metrics (metrics/localproxy.py: REFUSAL_REASONS)."""

    def __init__(self, message: str, reason: str = "credentials_missing") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TLSCredentials:
    cert_pem: bytes
    key_pem: bytes
    host_ca_pem: bytes

    @cached_property
    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError as e:
            raise CredentialsError(f"the client certificate cannot be read: {e}") from None

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @cached_property
    def identity(self) -> Identity:
        try:
            return identity_from_certificate(self.certificate)
        except ValueError as e:
            raise CredentialsError(f"the client certificate carries no identity: {e}") from None


def check_usable(creds: TLSCredentials, service: str, origin: str) -> None:
    """Raise CredentialsError unless creds are an unexpired certificate for `service`."""
    now = dt.datetime.now(dt.UTC)
    if creds.not_after <= now:
        raise CredentialsError(
            f"the certificate in {origin} expired at {creds.not_after:%Y-%m-%d %H:%M:%S} UTC; "
            "is the bot (mwibot start) running and renewing it?", "credentials_expired")
    route = creds.identity.route
    if route is None:
        raise CredentialsError(f"the certificate in {origin} is not a database certificate",
                               "other")
    if service and route.service != service:
        raise CredentialsError(f"the certificate in {origin} is for database service "
                               f"{route.service!r}, not {service!r}", "other")


class DirectoryCredentials:
    """The `tlscert`, `key` and `teleport-host-ca.crt` of a bot's output directory,
    re-read whenever one of them changes (inode, mtime or size)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: tuple[tuple[int, int, int], ...] | None = None
        self._current: tuple[bytes, bytes, bytes] | None = None

    def __repr__(self) -> str:
        return f"DirectoryCredentials({self.path!r})"

    def __call__(self) -> tuple[bytes, bytes, bytes]:
        signature = self._stat()
        if signature != self._signature or self._current is None:
            self._current = self._read()
            self._signature = signature
        return self._current

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        try:
            stats = [os.stat(os.path.join(self.path, name)) for name in FILES]
        except OSError as e:
            raise CredentialsError(f"cannot read the credentials in {self.path}: "
                                   f"{e.strerror}: {e.filename}") from None
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _read(self) -> tuple[bytes, bytes, bytes]:
        try:
            files = read_files(self.path, FILES)  # one consistent version when mwibot wrote it
        except (OSError, BundleError) as e:
            raise CredentialsError(f"cannot read the credentials in {self.path}: {e}") from None
        return files[TLS_CERT], files[KEY], files[HOST_CA]
