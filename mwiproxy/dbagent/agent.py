"""A database agent's life: join (once), keep its identity renewed, heartbeat its
databases, serve the proxies' sessions (`dbagent/link.py`), and say goodbye on the way
out so its databases disappear at once rather than when the heartbeat runs out.

Every auth API call is blocking and opens its own connection; calls run in a worker
thread (they are seconds apart, and a fresh connection never carries a stale
certificate from before a renewal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import socket
from collections.abc import Callable
from typing import Any

from cryptography import x509

from mwiproxy.auth.client import AuthClient, fetch_cas_pinned, first_answering
from mwiproxy.auth.errors import AccessDenied, AuthError
from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.config.durations import format_duration
from mwiproxy.dbagent import state
from mwiproxy.dbagent.link import LinkServer
from mwiproxy.dbagent.signin import Engine
from mwiproxy.dbagent.state import AgentIdentity
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.mongodb import PROTOCOL as MONGODB
from mwiproxy.engines.mongodb import MongoEngine
from mwiproxy.engines.mysql import PROTOCOLS as MYSQL_PROTOCOLS
from mwiproxy.engines.mysql import MySQLEngine
from mwiproxy.engines.postgres import PROTOCOLS as POSTGRES_PROTOCOLS
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.engines.redis import PROTOCOL as REDIS
from mwiproxy.engines.redis import RedisEngine
from mwiproxy.identity.authorities import (
    BACKDATE,
    PublicKey,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)
from mwiproxy.identity.rotation import renewal_due
from mwiproxy.metrics.cluster import (
    RESULT_FAILURE,
    RESULT_SUCCESS,
    NoopProxyMetrics,
    ProxyMetrics,
)
from mwiproxy.metrics.diag import HEALTHY, INITIALIZING, UNHEALTHY, DiagServer, HealthRegistry
from mwiproxy.metrics.registry import process_registry
from mwiproxy.process import binding
from mwiproxy.process.lifecycle import Signals, serve
from mwiproxy.process.pidfile import PidFile
from mwiproxy.wire.addr import split_address_list, split_host_port
from mwiproxy.wire.failover import FailoverOrder

log = logging.getLogger("mwiproxy.agent")

GOODBYE_TIMEOUT = 3.0
HEALTH = "db_service"  # the one service on the agent's /readyz
RETRY_MIN = 1.0
RENEWAL_MIN_WAIT = 1.0


class AgentError(ValueError):
    """The agent cannot start; the message says what to change."""


class _AuthSigner:
    """Database-client certificates from the cluster (`agent_sign_db_client`), each for
    the session grant the proxy sent with a session (`auth/agent_grants.py`)."""

    def __init__(self, agent: DatabaseAgent) -> None:
        self._agent = agent

    @property
    def db_ca_pem(self) -> bytes:
        return self._agent.identity.cas["db"]

    @property
    def trust_epoch(self) -> int:
        return self._agent.ca_epoch

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta,
                             *, service: str = "", grant: str = "") -> x509.Certificate:
        try:
            reply = await self._agent.call("agent_sign_db_client", db_user=db_user,
                                           service=service, grant=grant,
                                           public_key=public_key_pem(public_key).decode(),
                                           ttl=format_duration(ttl))
        except AuthError as e:
            raise UpstreamError(f"the cluster would not issue a certificate for database "
                                f"user {db_user!r}: {e.message}") from None
        return x509.load_pem_x509_certificate(str(reply["cert"]).encode())


_ENGINES: tuple[tuple[tuple[str, ...], type[Engine]], ...] = (
    (POSTGRES_PROTOCOLS, PostgresEngine), ((REDIS,), RedisEngine),
    (MYSQL_PROTOCOLS, MySQLEngine), ((MONGODB,), MongoEngine))


def _engines(config: ClusterConfig, signer: _AuthSigner, metrics: NoopProxyMetrics
             ) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for db in config.databases:
        kind = next((cls for protocols, cls in _ENGINES if db.protocol in protocols), None)
        if kind is None:
            log.warning("database %r: no %s engine yet; it is not registered",
                        db.name, db.protocol)
        else:
            engines[db.name] = kind(db, signer, metrics)
    return engines


class DatabaseAgent:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.service = config.db_service
        if not self.service.auth_server:
            raise AgentError("db_service.auth_server (or --auth-server) is needed: the "
                             "cluster proxy's address")
        self.cluster_addr = self.service.auth_server  # one address, or a list
        # several cluster processes on one storage (`a:3080,b:3080`): every call goes to
        # the one that answered last, and on to the next when it cannot be reached
        self.failover = FailoverOrder(split_address_list(self.cluster_addr))
        self.hostname = socket.gethostname()
        self._identity: AgentIdentity | None = None
        self.ca_epoch = 0  # bumped when the cluster's CAs rotate (see _follow_rotation)
        # the db_* families for the link sessions, heartbeats, identity expiry
        registry = process_registry() if self.service.diag_addr else None
        self.metrics: NoopProxyMetrics = NoopProxyMetrics() if registry is None else \
            ProxyMetrics(registry, [(db.name, db.protocol) for db in config.databases],
                         agent=True)
        self.engines = _engines(config, _AuthSigner(self), self.metrics)
        self._closed = False
        self._said_goodbye = False
        self._beat: asyncio.Future[Any] | None = None  # the heartbeat call in flight
        if not self.engines:
            raise AgentError("the agent serves no database: list PostgreSQL, CockroachDB, "
                             "Redis, MySQL/MariaDB or MongoDB databases under `databases` "
                             "in the config file")
        self.link = LinkServer(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._registered: set[str] = set()
        self.health = HealthRegistry()
        self.health.set(HEALTH, INITIALIZING, "not registered with the cluster yet")
        self.diag = DiagServer(self.service.diag_addr, self.health, registry) \
            if registry is not None else None

    # -- identity ----------------------------------------------------------------------

    @property
    def identity(self) -> AgentIdentity:
        assert self._identity is not None, "the agent has not joined yet"
        return self._identity

    def _hosts(self) -> list[str]:
        hosts = ["localhost", "127.0.0.1"]
        for addr in (self.service.listen_addr, self.service.public_addr):
            if addr:
                h = split_host_port(addr)[0]
                if h not in ("0.0.0.0", "::") and h not in hosts:
                    hosts.append(h)
        return hosts + [h for h in self.service.hosts if h not in hosts]

    def _load_or_join(self) -> AgentIdentity:
        stored = state.load(self.config.data_dir)
        if stored is not None and not stored.expired():
            log.info("agent %s: using the identity stored in %s", stored.host_id,
                     state.state_dir(self.config.data_dir))
            return stored
        token = self.service.resolve_token()
        if not token:
            why = "its stored identity expired" if stored else "it has not joined yet"
            raise AgentError(f"the agent needs a join token ({why}): create one with "
                             "`mwictl tokens add --type=db` and pass --token")
        if not self.service.ca_pins:
            raise AgentError("db_service.ca_pins (or --ca-pin) is needed to trust the "
                             "cluster on the first join: `mwictl status` prints the pin")
        key = generate_private_key()

        def join_at(address: str) -> Any:
            cas = fetch_cas_pinned(address, self.service.ca_pins)
            with AuthClient(address, ca_pems=cas["host"].encode()) as client:
                return client.call("agent_join", token=token, hosts=self._hosts(),
                                   hostname=self.hostname,
                                   ttl=format_duration(self.service.certificate_ttl),
                                   public_key=public_key_pem(key.public_key()).decode())
        reply = first_answering(self.failover, join_at, log)
        ident = AgentIdentity.from_reply(private_key_pem(key), reply)
        state.save(self.config.data_dir, ident)
        log.info("agent %s joined cluster at %s", ident.host_id, self.failover.preferred)
        return ident

    def _renew(self) -> AgentIdentity:
        key = generate_private_key()
        reply = self._call_sync("agent_renew", hosts=self._hosts(),
                                ttl=format_duration(self.service.certificate_ttl),
                                public_key=public_key_pem(key.public_key()).decode())
        ident = AgentIdentity.from_reply(private_key_pem(key), reply)
        state.save(self.config.data_dir, ident)
        return ident

    def _call_sync(self, method: str, **params: Any) -> Any:
        ident = self.identity

        def call_at(address: str) -> Any:
            with AuthClient(address, ca_pems=ident.cas["host"], cert_pem=ident.cert_pem,
                            key_pem=ident.key_pem) as client:
                return client.call(method, **params)
        return first_answering(self.failover, call_at, log)

    async def call(self, method: str, **params: Any) -> Any:
        """An auth API call as this agent, off the event loop."""
        return await asyncio.to_thread(self._call_sync, method, **params)

    # -- heartbeats --------------------------------------------------------------------

    def _heartbeat_body(self) -> dict[str, Any]:
        dbs = [{"name": e.db.name, "protocol": e.db.protocol, "uri": e.db.uri,
                "labels": dict(e.db.static_labels), "description": e.db.description}
               for e in self.engines.values()]
        return {"addr": self.link.public_addr, "hostname": self.hostname, "databases": dbs,
                "ttl": self.service.heartbeat_ttl.total_seconds()}

    async def heartbeat(self) -> None:
        # shielded: a drain that cancels the heartbeat loop still waits for the call in
        # flight before its goodbye, so no late beat registers a stopping agent again
        self._beat = asyncio.ensure_future(
            self.call("agent_heartbeat", **self._heartbeat_body()))
        self._beat.add_done_callback(_retrieved)
        try:
            reply = await asyncio.shield(self._beat)
        except (AuthError, OSError) as e:
            why = e.message if isinstance(e, AuthError) else str(e)
            self.health.set(HEALTH, UNHEALTHY, f"heartbeat failed: {why}")
            self.metrics.heartbeat(RESULT_FAILURE)
            raise
        self.metrics.heartbeat(RESULT_SUCCESS)
        self.metrics.identity_expiry(self.identity.expires.timestamp())
        accepted = set(reply.get("accepted") or ())
        if accepted:
            until = dt.datetime.fromtimestamp(float(reply["expires"]), dt.UTC)
            self.health.set(HEALTH, HEALTHY, f"serving {', '.join(sorted(accepted))}; "
                            f"registered until {until:%H:%M:%S} UTC")
        else:
            self.health.set(HEALTH, UNHEALTHY, "the cluster accepted none of the databases")
        if accepted != self._registered:
            log.info("agent %s: serving %s for the cluster", self.identity.host_id,
                     ", ".join(sorted(accepted)) or "nothing")
            self._registered = accepted
        for name, why in (reply.get("rejected") or {}).items():
            log.error("agent %s: the cluster rejected database %r: %s",
                      self.identity.host_id, name, why)
        await self._follow_rotation(reply)

    async def _follow_rotation(self, reply: dict[str, Any]) -> None:
        """A CA rotation reaches the agent through its heartbeats: the trusted bundles
        are taken at once (new connections verify with them), and an identity whose
        issuer is no longer the CA that signs is renewed now, not at half-life."""
        cas = reply.get("cas")
        if isinstance(cas, dict) and all(k in cas for k in state.CA_KINDS):
            fresh = {k: str(cas[k]).encode() for k in state.CA_KINDS}
            if fresh != self.identity.cas:
                self._identity = dataclasses.replace(self.identity, cas=fresh)
                await asyncio.to_thread(state.save, self.config.data_dir, self.identity)
                self.ca_epoch += 1
                self.link.reload_tls()
                log.info("agent %s: the cluster's CA bundles changed (a CA rotation); "
                         "now trusting them", self.identity.host_id)
        signers = reply.get("signers") or {}
        if state.issued_by_others(self.identity, signers):
            self._identity = await asyncio.to_thread(self._renew)
            self.ca_epoch += 1
            self.link.reload_tls()
            log.info("agent %s: identity re-issued by the cluster's new CA (a CA rotation)",
                     self.identity.host_id)

    async def _keep_registered(self) -> None:
        interval = self.service.heartbeat_ttl.total_seconds() / 3
        delay = self._next_wake(interval)
        while True:
            await asyncio.sleep(delay)
            try:
                if self._due_for_renewal():
                    self._identity = await asyncio.to_thread(self._renew)
                    self.link.reload_tls()
                    log.info("agent %s: identity renewed until %s", self.identity.host_id,
                             self.identity.expires)
                await self.heartbeat()
                delay = self._next_wake(interval)
            except (AuthError, OSError) as e:
                delay = max(RETRY_MIN, interval / 2)
                level = logging.ERROR if isinstance(e, AccessDenied) else logging.WARNING
                log.log(level, "agent heartbeat failed (retrying in %.0fs): %s", delay,
                        e.message if isinstance(e, AuthError) else e)

    def _renewal_due(self) -> dt.datetime:
        """Half-life, counted from the time of issue (notBefore is backdated for skew)."""
        ident = self.identity
        return renewal_due(ident.not_before + BACKDATE, ident.expires, 0.5)

    def _due_for_renewal(self) -> bool:
        return dt.datetime.now(dt.UTC) >= self._renewal_due()

    def _next_wake(self, interval: float) -> float:
        """The next heartbeat, or the renewal if that comes first (a short-lived identity
        must not expire between two heartbeats)."""
        until_due = (self._renewal_due() - dt.datetime.now(dt.UTC)).total_seconds()
        return max(RENEWAL_MIN_WAIT, min(interval, until_due))

    # -- run ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.metrics.count_bytes(asyncio.get_running_loop())
        if self.diag is not None:
            with binding.naming("db_service.diag_addr", self.service.diag_addr):
                await self.diag.start()
        try:
            self._identity = await asyncio.to_thread(self._load_or_join)
        except BaseException:
            if self.diag is not None:
                await self.diag.close()
            raise
        with binding.naming("db_service.listen_addr", self.service.listen_addr):
            await self.link.start()
        try:
            await self.heartbeat()
        except AccessDenied:
            await self.link.close()
            if self.diag is not None:
                await self.diag.close()
            raise
        except (AuthError, OSError) as e:  # the cluster may come back: keep trying
            log.warning("first heartbeat failed, retrying: %s",
                        e.message if isinstance(e, AuthError) else e)
        task = asyncio.ensure_future(self._keep_registered())
        self._tasks.add(task)

    # -- reload and shutdown (see process/lifecycle.py) ---------------------------------

    def status(self) -> str:
        return (f"database agent: serving {', '.join(sorted(self.engines))} on "
                f"{self.link.public_addr}")

    async def reload(self, new: ClusterConfig) -> None:
        """SIGHUP: the databases and the log level; the rest needs a restart (logged).
        Sessions open on an old engine go on; new ones use the new engines."""
        for key in ("data_dir", "cluster_name"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("SIGHUP: %s changed: needs a restart; running on with %r", key,
                            getattr(self.config, key))
        drain = new.db_service.drain_timeout
        if dataclasses.replace(new.db_service, drain_timeout=self.service.drain_timeout) \
                != self.service:
            log.warning("SIGHUP: db_service changed: needs a restart (all but "
                        "drain_timeout); running on with the old settings")
        engines = _engines(new, _AuthSigner(self), self.metrics)
        if not engines:
            raise AgentError("the new config serves no database: keeping the old list")
        self.engines = engines
        self.service.drain_timeout = drain
        self.config.databases = new.databases
        logging.getLogger().setLevel(new.log.level.upper())
        log.info("SIGHUP: config reloaded; serving %s", ", ".join(sorted(engines)))
        await self.heartbeat()  # the cluster learns the new list now, not at the next beat

    async def drain(self, timeout: float) -> None:
        """SIGTERM: no new link connections, unregistered at once (the cluster routes
        no new session here), then open sessions get up to `timeout` s to finish and
        the rest are cut."""
        await self.link.stop_accepting()
        self.health.set(HEALTH, UNHEALTHY, "draining: not accepting link connections")
        goodbye = asyncio.ensure_future(self._goodbye())  # the drain's clock runs meanwhile
        drained, cut = await self.link.drain(timeout)
        await goodbye
        if not self._closed:  # else a second signal cut them (lifecycle logged it)
            log.info("drained: %d link session(s) finished, %d cut at the %gs drain "
                     "timeout", drained, cut, timeout)

    async def _goodbye(self) -> None:
        """Stop heartbeating and unregister (once; bounded: the cluster may be gone)."""
        for task in self._tasks:
            task.cancel()
        if self._said_goodbye:
            return
        self._said_goodbye = True
        if self._beat is not None and not self._beat.done():
            await asyncio.wait({self._beat}, timeout=GOODBYE_TIMEOUT)
        with contextlib.suppress(AuthError, OSError, TimeoutError):
            await asyncio.wait_for(self.call("agent_goodbye"), GOODBYE_TIMEOUT)
            log.info("agent %s: unregistered", self.identity.host_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.link.close()
        self.health.set(HEALTH, UNHEALTHY, "shutting down")
        await self._goodbye()
        if self.diag is not None:
            await self.diag.close()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """A shielded call's failure after its caller went away is not worth a warning."""
    if not fut.cancelled():
        fut.exception()


async def run(config: ClusterConfig, reload: Callable[[], ClusterConfig] | None = None,
              pid_file: str = "") -> None:
    """Serve until SIGTERM/SIGINT (then unregister and drain, see process/lifecycle.py);
    SIGHUP re-reads the config file: the databases (engines rebuilt, registered at once),
    db_service.drain_timeout and the log level."""
    signals = Signals()  # first: a SIGHUP during start-up is queued, not fatal
    agent = DatabaseAgent(config)
    await agent.start()

    async def reload_config() -> None:
        assert reload is not None
        await agent.reload(reload())

    await serve(agent, signals, reload=reload_config if reload else None,
                drain_timeout=lambda: agent.service.drain_timeout.total_seconds(),
                pid_file=PidFile(pid_file),
                ready_line=f"mwiproxy: database agent {agent.identity.host_id} serving "
                f"{', '.join(sorted(agent.engines))} on {agent.link.public_addr} for the "
                f"cluster at {agent.cluster_addr}")
