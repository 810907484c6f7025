"""`mwiproxy start`: assembles storage, CAs, the auth service and the cluster proxy.

With no config file this is the embedded default: every service in one process, SQLite
state in the data dir. On start it also writes, into the data dir:
- `admin/identity`: the cluster admin identity `mwictl` uses (0600, renewed every start);
- `cluster.json`: the address mwictl should dial (public, no secrets).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
from pathlib import Path

from mwiproxy import _native
from mwiproxy.auth.api import serve_connection
from mwiproxy.auth.client import split_addr
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.base import LockRecord
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.engines.base import LocalSigner
from mwiproxy.engines.postgres import PROTOCOLS as POSTGRES_PROTOCOLS
from mwiproxy.engines.postgres import Engine, PostgresEngine
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
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import ProxyListener, ServerTLS
from mwiproxy.proxy.pingbridge import framed
from mwiproxy.proxy.postgres import PostgresFrontend
from mwiproxy.proxy.sessions import SessionRegistry
from mwiproxy.proxy.unserved import register_unserved, served_by_protocol
from mwiproxy.wire import agentlink, alpn

log = logging.getLogger("mwiproxy")

ADMIN_IDENTITY_TTL = dt.timedelta(days=30)
PROXY_CERT_TTL = dt.timedelta(days=30)
# the proxy's client identity towards database agents: short, re-signed as it nears expiry
LINK_CERT_TTL = dt.timedelta(hours=12)
LINK_CERT_RENEW_BEFORE = dt.timedelta(hours=1)
ADMIN_IDENTITY = "admin/identity"
CLUSTER_INFO = "cluster.json"


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.data_dir = private_dir(Path(config.data_dir))
        self.storage = SQLiteStorage(config.storage_path)
        self._check_cluster_name()
        self.cas = AuthoritySet.load_or_create(self.data_dir / "ca", config.cluster_name)
        host, port = split_addr(config.proxy.listen_addr)
        self.auth = AuthService(
            cluster=config.cluster_name, storage=self.storage, cas=self.cas,
            databases=list(config.databases),
            public_addr=config.proxy.public_addr or config.proxy.listen_addr,
        )
        self.listener = ProxyListener(host, port, self._tls_context)
        self.listener.route(alpn.AUTH, self._serve_auth)
        self.sessions = SessionRegistry()
        self._inner_ctx: _native.TLSContext | None = None
        self._link_ctx: tuple[_native.TLSContext, dt.datetime] | None = None
        self._route_databases()

    def _route_databases(self) -> None:
        signer = LocalSigner(self.cas)
        engines: dict[str, Engine] = {
            db.name: PostgresEngine(db, signer) for db in self.config.databases
            if db.protocol in POSTGRES_PROTOCOLS}
        for db in self.config.databases:
            if db.name not in engines:
                log.warning("database %r: no %s engine yet; it is listed but not served",
                            db.name, db.protocol)
        directory = EngineDirectory(engines, self.auth, self._link_context, POSTGRES_PROTOCOLS)
        interval = self.config.proxy.ping_interval.total_seconds()
        frontend = PostgresFrontend(self.auth, directory, self.sessions, self._inner_context,
                                    ping_interval=interval)
        self.listener.route_tls(alpn.POSTGRES, frontend.serve)
        self.listener.route_tls(alpn.with_ping(alpn.POSTGRES), framed(frontend.serve))
        register_unserved(self.listener, self.auth, served_by_protocol(self.config.databases))

    def _inner_context(self) -> _native.TLSContext:
        """The proxy's side of a client's own TLS (non-tunnel mode): no ALPN; a client
        certificate is asked for and verified against the user CA when given."""
        if self._inner_ctx is None:
            self._inner_ctx = self._tls_context().native_context([])
        return self._inner_ctx

    def _link_context(self) -> _native.TLSContext:
        """The proxy's client TLS towards database agents: a user-CA identity with usage
        `mwi:proxy`; agents must show a certificate from the agent CA."""
        now = dt.datetime.now(dt.UTC)
        if self._link_ctx is None or now >= self._link_ctx[1]:
            key = generate_private_key()
            ident = Identity(user=f"proxy.{self.config.cluster_name}", roles=("Proxy",),
                             usage=(oids.USAGE_PROXY,), cluster=self.config.cluster_name)
            cert = self.cas["user"].sign_identity(ident, key.public_key(), LINK_CERT_TTL)
            ctx = _native.TLSContext(False, cert_pem(cert), private_key_pem(key),
                                     self.cas["agent"].cert_pem, verify=_native.VERIFY_REQUIRED,
                                     alpn=[agentlink.ALPN])
            self._link_ctx = (ctx, cert.not_valid_after_utc - LINK_CERT_RENEW_BEFORE)
        return self._link_ctx[0]

    def _check_cluster_name(self) -> None:
        stored = self.storage.get_meta("cluster_name")
        if stored is None:
            self.storage.set_meta("cluster_name", self.config.cluster_name)
        elif stored != self.config.cluster_name:
            raise ValueError(
                f"data dir {self.data_dir} belongs to cluster {stored!r}, "
                f"but the config names {self.config.cluster_name!r}")

    def _proxy_hosts(self) -> list[str]:
        hosts = ["localhost", "127.0.0.1", "::1", self.config.cluster_name]
        for addr in (self.config.proxy.listen_addr, self.config.proxy.public_addr):
            if addr:
                h = split_addr(addr)[0]
                if h not in ("0.0.0.0", "::") and h not in hosts:
                    hosts.append(h)
        return hosts

    def _tls_context(self) -> ServerTLS:
        key = generate_private_key()
        hosts = self._proxy_hosts()
        cert = self.cas["host"].sign_server(hosts[0], hosts, key.public_key(), PROXY_CERT_TTL)
        return ServerTLS(cert_pem(cert), private_key_pem(key), self.cas["user"].cert_pem)

    async def _serve_auth(self, reader, writer, caller, remote):  # type: ignore[no-untyped-def]
        await serve_connection(self.auth, reader, writer, caller, remote)

    def write_admin_identity(self) -> Path:
        key = generate_private_key()
        ident = Identity(user="admin", roles=("admin",), usage=(oids.USAGE_ADMIN,),
                         cluster=self.config.cluster_name)
        cert = self.cas["user"].sign_identity(ident, key.public_key(), ADMIN_IDENTITY_TTL)
        path = private_dir(self.data_dir / "admin") / "identity"
        data = IdentityFile(private_key_pem(key), cert_pem(cert), (self.cas["host"].cert_pem,))
        write_private(path, data.render())
        return path

    def write_cluster_info(self) -> None:
        host, port = self.listener.address
        info = {"cluster_name": self.config.cluster_name, "proxy_addr": f"{host}:{port}",
                "public_addr": self.config.proxy.public_addr or f"{host}:{port}",
                "host_ca_pin": self.cas.host_pin, "pid": os.getpid()}
        write_private(self.data_dir / CLUSTER_INFO, json.dumps(info, indent=2).encode() + b"\n")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def cut_locked(lock: LockRecord) -> None:  # may be called from any thread
            loop.call_soon_threadsafe(self.sessions.on_lock, lock)

        self.auth.locks.on_lock(cut_locked)
        await self.listener.start()
        self.write_admin_identity()
        self.write_cluster_info()
        host, port = self.listener.address
        log.info("cluster %s: proxy listening on %s:%d (CA pin %s)",
                 self.config.cluster_name, host, port, self.cas.host_pin)

    async def close(self) -> None:
        await self.listener.close()
        self.sessions.close_all("shutdown", "the cluster proxy is shutting down")
        self.storage.close()


async def run(config: ClusterConfig) -> None:
    cluster = Cluster(config)
    await cluster.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mwiproxy: cluster {config.cluster_name!r} ready on "
          f"{':'.join(map(str, cluster.listener.address))}; data dir {cluster.data_dir}",
          flush=True)
    try:
        await stop.wait()
    finally:
        await cluster.close()
