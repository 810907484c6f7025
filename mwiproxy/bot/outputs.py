"""Render credentials into the files a bot output writes (Teleport tbot's names).

The file names are public API, defined once in `identity/bundle.py` (the bundle
contract the bot, the local proxy and the tests share); this module only renders them.

Not written: `key.pub` and `key-cert.pub` (the SSH half of tbot's identity). mwiproxy
gives database access only and issues no SSH certificates.

CA choices per format:
- `identity` and `tls.cas` carry the Host CA (what verifies the cluster proxy).
- `mongo.cas` carries the Database CA: through the local proxy the client's own TLS is
  answered by the cluster proxy's MongoDB front end with a certificate of that CA.
- `cockroach/ca.crt` carries the Database CA and then the Host CA (which one Teleport
  writes is not confirmed across versions). A CockroachDB client checks its server with
  it: a node signed by the Database CA, or — through the local proxy, whose PostgreSQL
  front end also answers `psql` with the default files' `teleport-host-ca.crt` — the
  cluster proxy, signed by the Host CA.

Every function returns `{relative name: content}`, ready for
`DirectoryDestination.write_bundle`, which writes them all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from mwiproxy.bot.credentials import Credentials
from mwiproxy.identity.bundle import (
    COCKROACH_CA,
    COCKROACH_CERT,
    COCKROACH_KEY,
    DATABASE_CA,
    HOST_CA,
    IDENTITY,
    KEY,
    MONGO_CAS,
    MONGO_CERT,
    TLS_CERT,
    TLS_FORMAT_CAS,
    TLS_FORMAT_CERT,
    TLS_FORMAT_KEY,
    USER_CA,
)
from mwiproxy.identity.identityfile import IdentityFile

FORMAT_DEFAULT = ""
FORMAT_TLS = "tls"
FORMAT_MONGO = "mongo"
FORMAT_COCKROACH = "cockroach"
DATABASE_FORMATS = (FORMAT_DEFAULT, FORMAT_TLS, FORMAT_MONGO, FORMAT_COCKROACH)

Files = dict[str, bytes]


def render_common(creds: Credentials) -> Files:
    """The files every credential output writes, whatever its format."""
    return {
        KEY: creds.key_pem,
        TLS_CERT: creds.cert_pem,
        HOST_CA: b"".join(creds.host_ca_pems),
        USER_CA: b"".join(creds.user_ca_pems),
        DATABASE_CA: b"".join(creds.db_ca_pems),
        IDENTITY: IdentityFile(creds.key_pem, creds.cert_pem, creds.host_ca_pems).render(),
    }


def render_identity_output(creds: Credentials) -> Files:
    """Files of a `type: identity` service (the bot's own identity, for `mwictl -i`)."""
    return render_common(creds)


def render_database_output(creds: Credentials, fmt: str = FORMAT_DEFAULT) -> Files:
    """Files of a `type: database` service in the given `format`."""
    try:
        extra = _FORMATS[fmt]
    except KeyError:
        known = ", ".join(repr(f) for f in DATABASE_FORMATS)
        raise ValueError(f"unknown database output format {fmt!r} (known: {known})") from None
    files = render_common(creds)
    files.update(extra(creds))
    return files


def _no_extra_files(creds: Credentials) -> Files:
    return {}


def _tls_files(creds: Credentials) -> Files:
    return {
        TLS_FORMAT_CERT: creds.cert_pem,
        TLS_FORMAT_KEY: creds.key_pem,
        TLS_FORMAT_CAS: b"".join(creds.host_ca_pems),
    }


def _mongo_files(creds: Credentials) -> Files:
    # MongoDB clients take one PEM holding the certificate followed by its key.
    return {
        MONGO_CERT: creds.cert_pem + creds.key_pem,
        MONGO_CAS: b"".join(creds.db_ca_pems),
    }


def _cockroach_files(creds: Credentials) -> Files:
    return {
        COCKROACH_CERT: creds.cert_pem,
        COCKROACH_KEY: creds.key_pem,
        COCKROACH_CA: b"".join(creds.db_ca_pems + creds.host_ca_pems),
    }


_FORMATS: dict[str, Callable[[Credentials], Files]] = {
    FORMAT_DEFAULT: _no_extra_files,
    FORMAT_TLS: _tls_files,
    FORMAT_MONGO: _mongo_files,
    FORMAT_COCKROACH: _cockroach_files,
}
