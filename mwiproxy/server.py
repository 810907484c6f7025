"""`mwiproxy start`: assembles storage, CAs, the auth service and the cluster proxy.

With no config file this is the embedded default: every service in one process, SQLite
state in the data dir. On start it also writes, into the data dir:
- `admin/identity`: the cluster admin identity `mwictl` uses (0600, renewed while the
  cluster runs, see proxy/owncerts.py);
- `cluster.json`: the address mwictl should dial (public, no secrets).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mwiproxy import _native
from mwiproxy.auth import ca_share
from mwiproxy.auth.agent_feed import AgentFeed
from mwiproxy.auth.api import serve_connection
from mwiproxy.auth.ca_rotation import UPDATE_CLIENTS, drive_schedule
from mwiproxy.auth.handlers import METHODS
from mwiproxy.auth.lock_feed import LockFeed
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.base import LockRecord
from mwiproxy.auth.storage.opener import open_storage
from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.engines.base import LocalSigner
from mwiproxy.engines.mongodb import PROTOCOL as MONGO_PROTOCOL
from mwiproxy.engines.mongodb import MongoEngine
from mwiproxy.engines.mysql import PROTOCOLS as MYSQL_PROTOCOLS
from mwiproxy.engines.mysql import MySQLEngine
from mwiproxy.engines.postgres import PROTOCOLS as POSTGRES_PROTOCOLS
from mwiproxy.engines.postgres import Engine, PostgresEngine
from mwiproxy.engines.redis import PROTOCOL as REDIS_PROTOCOL
from mwiproxy.engines.redis import RedisEngine
from mwiproxy.identity.authorities import AuthoritySet, write_private
from mwiproxy.metrics.auth import AuthMetrics
from mwiproxy.metrics.cluster import NoopProxyMetrics, ProxyMetrics
from mwiproxy.metrics.diag import HEALTHY, INITIALIZING, DiagServer, HealthRegistry
from mwiproxy.metrics.registry import process_registry
from mwiproxy.process import binding
from mwiproxy.process.lifecycle import Signals, serve
from mwiproxy.process.pidfile import DataDirLock, PidFile
from mwiproxy.proxy import queryaudit
from mwiproxy.proxy.directory import EngineDirectory
from mwiproxy.proxy.listener import ProxyListener, listener_limits
from mwiproxy.proxy.mongodb import MongoFrontend
from mwiproxy.proxy.mysql import MySQLFrontend
from mwiproxy.proxy.owncerts import OwnCertificates
from mwiproxy.proxy.pingbridge import framed
from mwiproxy.proxy.postgres import PostgresFrontend
from mwiproxy.proxy.redis import RedisFrontend
from mwiproxy.proxy.refusals import RefusalAudit
from mwiproxy.proxy.sessions import SessionRegistry
from mwiproxy.web.app import WebUI
from mwiproxy.wire import alpn
from mwiproxy.wire.addr import split_host_port

log = logging.getLogger("mwiproxy")

ADMIN_IDENTITY = "admin/identity"
CLUSTER_INFO = "cluster.json"
# what a SIGHUP applies; any other change in cluster.yaml is logged as needing a restart
RELOADABLE = frozenset({"databases", "log.level", "proxy.ping_interval",
                        "proxy.drain_timeout", "auth.max_token_ttl",
                        "auth.max_certificate_ttl"})
# keys whose values may hold a password or a token: never logged
SECRETS = frozenset({"storage.conn_string", "db_service.token"})
# once cut, how long sessions get to wind up (the relay's close timeout is 5 s) and write
# their db.session.end before what is left is cancelled
CUT_GRACE = 10.0


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.data_dir = private_dir(Path(config.data_dir))
        # one cluster per data dir: locked before anything in it is written
        self._lock = DataDirLock(self.data_dir)
        self._lock.acquire()
        self._closed = False
        self.storage = open_storage(config)
        self._check_cluster_name()
        self.cas = AuthoritySet.load_or_create(self.data_dir / "ca", config.cluster_name)
        # several cluster processes on one PostgreSQL storage: one set of CAs (a copy)
        ca_share.check_shared(self.storage, self.cas, self.data_dir / "ca")
        host, port = split_host_port(config.proxy.listen_addr)
        self.auth = AuthService(
            cluster=config.cluster_name, storage=self.storage, cas=self.cas,
            databases=list(config.databases),
            public_addr=config.proxy.public_addr or config.proxy.listen_addr,
            limits=config.auth,
        )
        self.metrics, self.diag = self._diagnostics()
        # a tampered audit log is logged and audited here, never repaired
        self.auth.audit.check_at_start()
        # the proxy's certificates and the admin identity, each renewed while we run
        self.own = OwnCertificates(self.cas, config, self._proxy_hosts(),
                                   self.data_dir / ADMIN_IDENTITY)
        self.listener = ProxyListener(host, port, self.own.server_tls,
                                      on_refusal=RefusalAudit(self.auth.audit.emit),
                                      limits=listener_limits(config.proxy),
                                      metrics=self.metrics)
        self.listener.route(alpn.AUTH, self._serve_auth)
        self.sessions = SessionRegistry()
        # the web UI: HTTP/1.1 on the same port (ALPN http/1.1, or none: a browser)
        self.web = WebUI(self.auth, self.sessions)
        self.listener.route(alpn.HTTP1, self.web.serve)
        self.listener.route(alpn.NONE, self.web.serve)
        self._rotation_timer: asyncio.Task[None] | None = None
        self._lock_feed: LockFeed | None = None
        self._agent_feed: AgentFeed | None = None
        self._route_databases()

    def _diagnostics(self) -> tuple[NoopProxyMetrics, DiagServer | None]:
        """/livez, /readyz and /metrics on `diag_addr`; no-op metrics when it is off."""
        if not self.config.diag_addr:
            return NoopProxyMetrics(), None
        registry = process_registry()
        auth = self.auth
        self.auth.use_metrics(AuthMetrics(
            registry, METHODS, locks=lambda: len(auth.locks.active()),
            agents=lambda: len(auth.agents.live()), audit=auth.audit.writer.counts))
        metrics = ProxyMetrics(registry, [(db.name, db.protocol) for db in self.config.databases])
        self.health = HealthRegistry()
        self.health.set("proxy", INITIALIZING, "not listening yet")
        return metrics, DiagServer(self.config.diag_addr, self.health, registry)

    def _route_databases(self) -> None:
        signer = LocalSigner(self.cas)
        engines: dict[str, Engine] = {
            db.name: PostgresEngine(db, signer, self.metrics) for db in self.config.databases
            if db.protocol in POSTGRES_PROTOCOLS}
        mysql_engines = {db.name: MySQLEngine(db, signer, self.metrics)
                         for db in self.config.databases if db.protocol in MYSQL_PROTOCOLS}
        redis = {db.name: RedisEngine(db, signer, self.metrics)
                 for db in self.config.databases if db.protocol == REDIS_PROTOCOL}
        for db in self.config.databases:
            if (db.name not in engines and db.name not in redis
                    and db.name not in mysql_engines and db.protocol != MONGO_PROTOCOL):
                log.warning("database %r: no %s engine yet; it is listed but not served",
                            db.name, db.protocol)
        # the agent link's client identity: user CA, usage `mwi:proxy`; agents must show
        # a certificate from the agent CA. Inner TLS: the proxy's server certificate.
        directory = EngineDirectory(engines, self.auth, self.own.link_context,
                                    POSTGRES_PROTOCOLS, self.metrics)
        interval = self.config.proxy.ping_interval.total_seconds()
        key = queryaudit.param_key(self.auth.storage)
        frontend = PostgresFrontend(self.auth, directory, self.sessions,
                                    self.own.inner_context, ping_interval=interval,
                                    startup_timeout=self._first_message_timeout,
                                    metrics=self.metrics,
                                    query_audit=self.config.audit.queries,
                                    query_wait=self.config.audit.query_backpressure == "wait",
                                    param_key=key)
        self.listener.route_tls(alpn.POSTGRES, frontend.serve)
        self.listener.route_tls(alpn.with_ping(alpn.POSTGRES), framed(frontend.serve))
        redis_engines = EngineDirectory(redis, self.auth, self.own.link_context,
                                        (REDIS_PROTOCOL,), self.metrics, label=REDIS_PROTOCOL)
        redis_frontend = RedisFrontend(self.auth, redis_engines, self.sessions,
                                       self.own.inner_context, ping_interval=interval,
                                       setup_timeout=self._first_message_timeout,
                                       metrics=self.metrics,
                                       query_audit=self.config.audit.queries,
                                       query_wait=self.config.audit.query_backpressure
                                       == "wait",
                                       param_key=key)
        self.listener.route_tls(alpn.REDIS, redis_frontend.serve)
        self.listener.route_tls(alpn.with_ping(alpn.REDIS), framed(redis_frontend.serve))
        mysql_directory = EngineDirectory(mysql_engines, self.auth, self.own.link_context,
                                          MYSQL_PROTOCOLS, self.metrics, label="mysql")
        mysql = MySQLFrontend(self.auth, mysql_directory, self.sessions,
                              self.own.inner_context,
                              ping_interval=interval,
                              startup_timeout=self._first_message_timeout,
                              metrics=self.metrics, query_audit=self.config.audit.queries,
                              query_wait=self.config.audit.query_backpressure == "wait",
                              param_key=key)
        self.listener.route_tls(alpn.MYSQL, mysql.serve)
        self.listener.route_tls(alpn.with_ping(alpn.MYSQL), framed(mysql.serve))
        self._route_mongodb(signer, interval)

    def _route_mongodb(self, signer: LocalSigner, interval: float) -> None:
        """MongoDB (in this process or through an agent): non-tunnel clients are
        answered with the Database CA's certificate, the CA of the bot's mongo.cas."""
        engines = EngineDirectory(
            {db.name: MongoEngine(db, signer, self.metrics)
             for db in self.config.databases if db.protocol == MONGO_PROTOCOL},
            self.auth, self.own.link_context, (MONGO_PROTOCOL,), self.metrics,
            label=MONGO_PROTOCOL)
        mongo = MongoFrontend(self.auth, self.sessions, self.own.db_inner_context,
                              engines=engines, ping_interval=interval,
                              setup_timeout=self._first_message_timeout,
                              metrics=self.metrics, query_audit=self.config.audit.queries,
                              query_wait=self.config.audit.query_backpressure == "wait",
                              param_key=queryaudit.param_key(self.auth.storage))
        self.listener.route_tls(alpn.MONGODB, mongo.serve)
        self.listener.route_tls(alpn.with_ping(alpn.MONGODB), framed(mongo.serve))

    def _check_cluster_name(self) -> None:
        stored = self.storage.get_meta("cluster_name")
        if stored is None:
            self.storage.set_meta("cluster_name", self.config.cluster_name)
        elif stored != self.config.cluster_name:
            where = f"data dir {self.data_dir}" if self.config.storage.type == "sqlite" \
                else "the PostgreSQL storage"
            raise ValueError(f"{where} belongs to cluster {stored!r}, "
                             f"but the config names {self.config.cluster_name!r}")

    def _proxy_hosts(self) -> list[str]:
        hosts = ["localhost", "127.0.0.1", "::1", self.config.cluster_name]
        for addr in (self.config.proxy.listen_addr, self.config.proxy.public_addr):
            if addr:
                h = split_host_port(addr)[0]
                if h not in ("0.0.0.0", "::") and h not in hosts:
                    hosts.append(h)
        return hosts

    async def _serve_auth(self, reader, writer, caller, remote):  # type: ignore[no-untyped-def]
        await serve_connection(self.auth, reader, writer, caller, remote,
                               self._first_message_timeout)

    @property
    def _first_message_timeout(self) -> float:
        return self.config.proxy.first_message_timeout.total_seconds()

    def write_cluster_info(self) -> None:
        host, port = self.listener.address
        info = {"cluster_name": self.config.cluster_name, "proxy_addr": f"{host}:{port}",
                "public_addr": self.config.proxy.public_addr or f"{host}:{port}",
                "host_ca_pin": self.cas.host_pin, "pid": os.getpid()}
        write_private(self.data_dir / CLUSTER_INFO, json.dumps(info, indent=2).encode() + b"\n")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        engines = _native.engines_for(loop, self.config.proxy.workers)  # before any relay
        log.info("proxy: %d relay worker(s)%s", len(engines),
                 "" if _native.NATIVE else " (pure build: the event loop relays)")

        def cut_locked(lock: LockRecord) -> None:  # may be called from any thread
            loop.call_soon_threadsafe(self.sessions.on_lock, lock)

        self.auth.locks.on_lock(cut_locked)
        # locks made by another cluster process on the same (PostgreSQL) storage
        self._lock_feed = LockFeed.start_for(self.auth.locks, self.storage)
        # and agents that heartbeat to another one (auth/agent_feed.py)
        self._agent_feed = AgentFeed.start_for(self.auth.agents, self.storage)
        self.metrics.count_bytes(loop)
        if self.diag is not None:
            with binding.naming("diag_addr", self.config.diag_addr):
                await self.diag.start()
        await self.web.start()
        with binding.naming("proxy.listen_addr", self.config.proxy.listen_addr):
            await self.listener.start()
        # writes the admin identity, then keeps every certificate of ours renewed
        self.own.start(on_server_renew=self.listener.reload_tls)
        self.write_cluster_info()
        # CA rotation: our certificates follow each phase; automatic rotations advance
        self.auth.rotation.on_change(
            lambda kind, phase: loop.call_soon_threadsafe(self._ca_rotated, kind, phase))
        # from the rotation's worker thread: the other processes' next start checks it
        self.auth.rotation.on_change(lambda _k, _p: ca_share.record(self.storage, self.cas))
        self._rotation_timer = loop.create_task(drive_schedule(self.auth.rotation))
        if self.diag is not None:  # the auth service answers on the proxy's port
            self.health.set("proxy", HEALTHY)
        host, port = self.listener.address
        log.info("cluster %s: proxy listening on %s:%d (CA pin %s)",
                 self.config.cluster_name, host, port, self.cas.host_pin)

    def _ca_rotated(self, kind: str, phase: str) -> None:
        """Re-issue what a CA phase change touches (auth/ca_rotation.py); the engines'
        database contexts follow by themselves (AuthoritySet.epoch). The server
        certificate stays through the host (and Database) CA's update_clients: servers
        move to the new CA in update_servers, after every client had a grace period to
        trust it."""
        touched = {"host": (self.own.server, self.own.admin),
                   "user": (self.own.server, self.own.link, self.own.admin),
                   "agent": (self.own.link,),
                   # the MongoDB inner certificate (non-tunnel) is the Database CA's
                   "db": (self.own.server,)}.get(kind, ())
        for rotating in touched:
            if (kind in ("host", "db") and phase == UPDATE_CLIENTS
                    and rotating is self.own.server):
                continue
            try:
                rotating.renew_now()
            except Exception:  # the timer renews it later; the old one stays in use
                log.exception("CA rotation (%s CA, %s): re-issuing %s failed", kind, phase,
                              rotating.what)
        self.write_cluster_info()

    # -- reload and shutdown (see process/lifecycle.py) ---------------------------------

    def status(self) -> str:
        return (f"cluster {self.config.cluster_name}: proxy on {self.config.proxy.listen_addr}"
                f", {len(self.config.databases)} database(s), {len(self.sessions)} session(s)")

    def reload(self, new: ClusterConfig) -> None:
        """SIGHUP: apply the RELOADABLE parts of `new`, keep the rest (logged as needing
        a restart). Engines are rebuilt either way, so new sessions re-read the
        databases' CA files and get fresh client certificates; open sessions go on."""
        changed = _changed(self.config, new)
        merged = copy.deepcopy(self.config)
        for key in changed:
            if key in RELOADABLE:
                _set(merged, key, _get(new, key))
            elif key in SECRETS:
                log.warning("SIGHUP: %s changed: needs a restart; running on with the old "
                            "value", key)
            else:
                log.warning("SIGHUP: %s changed (%r → %r): needs a restart; running on "
                            "with the old value", key, _get(self.config, key), _get(new, key))
        old, self.config = self.config, merged
        try:
            self._route_databases()
        except Exception:
            self.config = old
            self._route_databases()
            raise
        self.auth.databases = {d.name: d for d in merged.databases}
        self.auth.limits = merged.auth
        logging.getLogger().setLevel(merged.log.level.upper())
        applied = [key for key in changed if key in RELOADABLE]
        log.info("SIGHUP: cluster.yaml reloaded (%s); database engines rebuilt",
                 "changed: " + ", ".join(applied) if applied else "no reloadable change")

    @property
    def drain_timeout(self) -> float:
        return self.config.proxy.drain_timeout.total_seconds()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; give open sessions up to `timeout` s to end on their own."""
        await self.listener.stop_accepting()
        if self.diag is not None:
            self.health.block("proxy", "draining: not accepting connections")
        if self.sessions:
            log.info("draining: no new connections; %d open session(s) have up to %gs",
                     len(self.sessions), timeout)
        if not await self._sessions_ended(timeout):
            log.warning("drain timeout: cutting %d open session(s)", len(self.sessions))

    async def _sessions_ended(self, timeout: float) -> bool:
        return await self.sessions.wait_empty(timeout)

    async def close(self) -> None:
        """Cut what is still open, let every session write its db.session.end, then
        stop. Storage closes last: the audit is written until then."""
        if self._closed:
            return
        self._closed = True
        if self._rotation_timer is not None:
            self._rotation_timer.cancel()
        await self.listener.stop_accepting()
        self.sessions.close_all("shutdown", "the cluster proxy is shutting down")
        await self._sessions_ended(CUT_GRACE)
        await self.listener.close(wait=CUT_GRACE)  # cancelled sessions still write theirs
        await self.web.close()
        await self.own.close()
        if self.diag is not None:
            await self.diag.close()
        if self._lock_feed is not None:
            await asyncio.to_thread(self._lock_feed.close)
        if self._agent_feed is not None:
            await asyncio.to_thread(self._agent_feed.close)
        # every event queued so far is stored (or logged as not stored) before exit
        await asyncio.to_thread(self.auth.audit.close)
        self.storage.close()
        self._lock.release()


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (sections compared key by key)."""
    out: list[str] = []
    for f in dataclasses.fields(old):
        key, a, b = prefix + f.name, getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and key not in RELOADABLE:
            out += _changed(a, b, key + ".")
        else:
            out.append(key)
    return out


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    setattr(_get(obj, ".".join(path)) if path else obj, last, value)


async def run(config: ClusterConfig, reload: Callable[[], ClusterConfig] | None = None,
              pid_file: str = "") -> None:
    """Serve until SIGTERM/SIGINT (drained, see process/lifecycle.py); SIGHUP reloads
    from `reload` (cluster.yaml read again)."""
    signals = Signals()  # first: a SIGHUP during start-up is queued, not fatal
    cluster = Cluster(config)
    try:
        await cluster.start()
    except BaseException:
        await cluster.close()
        raise

    async def reload_config() -> None:
        assert reload is not None
        cluster.reload(reload())

    await serve(cluster, signals, reload=reload_config if reload else None,
                drain_timeout=lambda: cluster.drain_timeout, pid_file=PidFile(pid_file),
                ready_line=f"mwiproxy: cluster {config.cluster_name!r} ready on "
                f"{':'.join(map(str, cluster.listener.address))}; data dir {cluster.data_dir}")
