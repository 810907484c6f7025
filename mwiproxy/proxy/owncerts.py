"""The cluster's own certificates, each renewed at `proxy.renew_at` of its life while
the cluster runs (see identity/rotation.py):

- the proxy's server certificate (host CA), on the auth API and the database ALPNs;
- the same certificate on the inner TLS of non-tunnel PostgreSQL (the client's own TLS:
  `sslrootcert=teleport-host-ca.crt`), and one from the Database CA, for the same
  names, on the inner TLS of non-tunnel MongoDB (the bot's `mongo.cas` is that CA);
- the proxy's client identity towards database agents (user CA, usage `mwi:proxy`);
- the admin identity file `mwictl` reads (`<data dir>/admin/identity`, 0600, replaced
  by a rename so a reader never sees half a file).

New connections get the new certificates; open ones keep the TLS state they were made
with, so sessions outlive any number of rotations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from mwiproxy import _native
from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import (
    AuthoritySet,
    cert_pem,
    generate_private_key,
    private_key_pem,
    write_private,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.identity.identityfile import IdentityFile
from mwiproxy.identity.rotation import Issued, Rotating
from mwiproxy.proxy.listener import ServerTLS
from mwiproxy.wire import agentlink

T = TypeVar("T")


@dataclass(frozen=True)
class ServerIdentity:
    tls: ServerTLS  # the listener builds its contexts from it
    inner: _native.TLSContext  # non-tunnel mode: no ALPN, client certificate optional
    db_inner: _native.TLSContext  # the same, with a certificate of the Database CA


class OwnCertificates:
    def __init__(self, cas: AuthoritySet, config: ClusterConfig, hosts: list[str],
                 admin_path: Path) -> None:
        self._cas = cas
        self._cluster = config.cluster_name
        self._hosts = hosts
        self._admin_path = admin_path
        p = config.proxy
        self._ttl = {"server": p.certificate_ttl, "link": p.link_certificate_ttl,
                     "admin": config.auth.admin_identity_ttl}
        self.server = Rotating("the proxy's server certificate", self._issue_server,
                               renew_at=p.renew_at)
        self.link = Rotating("the proxy's identity towards database agents",
                             self._issue_link, renew_at=p.renew_at)
        self.admin = Rotating(f"the admin identity {admin_path}", self._write_admin,
                              renew_at=p.renew_at)

    # what new connections use
    def server_tls(self) -> ServerTLS:
        return self.server.current.tls

    def inner_context(self) -> _native.TLSContext:
        return self.server.current.inner

    def db_inner_context(self) -> _native.TLSContext:
        return self.server.current.db_inner

    def link_context(self) -> _native.TLSContext:
        return self.link.current

    def start(self, on_server_renew: Callable[[], None]) -> None:
        """Issue what is missing (the admin identity file is written now) and keep all
        renewed; `on_server_renew` puts a new server certificate in the listener."""
        self.server.set_on_renew(lambda _new: on_server_renew())
        for rotating in (self.server, self.link, self.admin):
            rotating.start()

    async def close(self) -> None:
        for rotating in (self.server, self.link, self.admin):
            await rotating.close()

    # issuing: in a worker thread once running (see Rotating)
    def _issue_server(self) -> Issued[ServerIdentity]:
        key = generate_private_key()
        cert = self._cas["host"].sign_server(self._hosts[0], self._hosts, key.public_key(),
                                             self._ttl["server"])
        tls = ServerTLS(cert_pem(cert), private_key_pem(key), self._cas["user"].cert_pem)
        # the Database CA's: what a client holding mongo.cas expects of its server
        db_cert = self._cas["db"].sign_server(self._hosts[0], self._hosts, key.public_key(),
                                              self._ttl["server"])
        db_tls = ServerTLS(cert_pem(db_cert), tls.key_pem, tls.client_ca_pem)
        return _issued(ServerIdentity(tls, tls.native_context([]), db_tls.native_context([])),
                       cert)

    def _issue_link(self) -> Issued[_native.TLSContext]:
        key = generate_private_key()
        ident = Identity(user=f"proxy.{self._cluster}", roles=("Proxy",),
                         usage=(oids.USAGE_PROXY,), cluster=self._cluster)
        cert = self._cas["user"].sign_identity(ident, key.public_key(), self._ttl["link"])
        ctx = _native.TLSContext(False, cert_pem(cert), private_key_pem(key),
                                 self._cas["agent"].cert_pem, verify=_native.VERIFY_REQUIRED,
                                 alpn=[agentlink.ALPN])
        return _issued(ctx, cert)

    def _write_admin(self) -> Issued[Path]:
        key = generate_private_key()
        ident = Identity(user="admin", roles=("admin",), usage=(oids.USAGE_ADMIN,),
                         cluster=self._cluster)
        cert = self._cas["user"].sign_identity(ident, key.public_key(), self._ttl["admin"])
        data = IdentityFile(private_key_pem(key), cert_pem(cert),
                            (self._cas["host"].cert_pem,))
        self._admin_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._admin_path.parent, 0o700)
        write_private(self._admin_path, data.render())
        return _issued(self._admin_path, cert)


def _issued(value: T, cert: x509.Certificate) -> Issued[T]:
    return Issued(value, cert.serial_number, cert.not_valid_after_utc)
