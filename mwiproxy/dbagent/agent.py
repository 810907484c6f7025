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
import datetime as dt
import logging
import signal
import socket
from typing import Any

from cryptography import x509

from mwiproxy.auth.client import AuthClient, fetch_cas_pinned
from mwiproxy.auth.errors import AccessDenied, AuthError
from mwiproxy.bot.diag import HEALTHY, INITIALIZING, UNHEALTHY, DiagServer, HealthRegistry
from mwiproxy.config.cluster import ClusterConfig, split_host_port
from mwiproxy.config.durations import format_duration
from mwiproxy.dbagent import state
from mwiproxy.dbagent.link import LinkServer
from mwiproxy.dbagent.state import AgentIdentity
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.postgres import PROTOCOLS, PostgresEngine
from mwiproxy.identity.authorities import (
    PublicKey,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)

log = logging.getLogger("mwiproxy.agent")

GOODBYE_TIMEOUT = 3.0
HEALTH = "db_service"  # the one service on the agent's /readyz
RETRY_MIN = 1.0


class AgentError(ValueError):
    """The agent cannot start; the message says what to change."""


class _AuthSigner:
    """Database-client certificates from the cluster (`agent_sign_db_client`)."""

    def __init__(self, agent: DatabaseAgent) -> None:
        self._agent = agent

    @property
    def db_ca_pem(self) -> bytes:
        return self._agent.identity.cas["db"]

    async def sign_db_client(self, db_user: str, public_key: PublicKey, ttl: dt.timedelta
                             ) -> x509.Certificate:
        try:
            reply = await self._agent.call("agent_sign_db_client", db_user=db_user,
                                           public_key=public_key_pem(public_key).decode(),
                                           ttl=format_duration(ttl))
        except AuthError as e:
            raise UpstreamError(f"the cluster would not issue a certificate for database "
                                f"user {db_user!r}: {e.message}") from None
        return x509.load_pem_x509_certificate(str(reply["cert"]).encode())


class DatabaseAgent:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.service = config.db_service
        if not self.service.auth_server:
            raise AgentError("db_service.auth_server (or --auth-server) is needed: the "
                             "cluster proxy's address")
        self.cluster_addr = self.service.auth_server
        self.hostname = socket.gethostname()
        self._identity: AgentIdentity | None = None
        signer = _AuthSigner(self)
        self.engines = {db.name: PostgresEngine(db, signer) for db in config.databases
                        if db.protocol in PROTOCOLS}
        for db in config.databases:
            if db.name not in self.engines:
                log.warning("database %r: no %s engine yet; it is not registered",
                            db.name, db.protocol)
        if not self.engines:
            raise AgentError("the agent serves no database: list PostgreSQL or CockroachDB "
                             "databases under `databases` in the config file")
        self.link = LinkServer(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._registered: set[str] = set()
        self.health = HealthRegistry()
        self.health.set(HEALTH, INITIALIZING, "not registered with the cluster yet")
        self.diag = DiagServer(self.service.diag_addr, self.health) \
            if self.service.diag_addr else None

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
        cas = fetch_cas_pinned(self.cluster_addr, self.service.ca_pins)
        key = generate_private_key()
        with AuthClient(self.cluster_addr, ca_pems=cas["host"].encode()) as client:
            reply = client.call("agent_join", token=token, hosts=self._hosts(),
                                hostname=self.hostname,
                                ttl=format_duration(self.service.certificate_ttl),
                                public_key=public_key_pem(key.public_key()).decode())
        ident = AgentIdentity.from_reply(private_key_pem(key), reply)
        state.save(self.config.data_dir, ident)
        log.info("agent %s joined cluster at %s", ident.host_id, self.cluster_addr)
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
        with AuthClient(self.cluster_addr, ca_pems=ident.cas["host"], cert_pem=ident.cert_pem,
                        key_pem=ident.key_pem) as client:
            return client.call(method, **params)

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
        try:
            reply = await self.call("agent_heartbeat", **self._heartbeat_body())
        except (AuthError, OSError) as e:
            why = e.message if isinstance(e, AuthError) else str(e)
            self.health.set(HEALTH, UNHEALTHY, f"heartbeat failed: {why}")
            raise
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

    async def _keep_registered(self) -> None:
        interval = self.service.heartbeat_ttl.total_seconds() / 3
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                if self._due_for_renewal():
                    self._identity = await asyncio.to_thread(self._renew)
                    self.link.reload_tls()
                    log.info("agent %s: identity renewed until %s", self.identity.host_id,
                             self.identity.expires)
                await self.heartbeat()
                delay = interval
            except (AuthError, OSError) as e:
                delay = max(RETRY_MIN, interval / 2)
                level = logging.ERROR if isinstance(e, AccessDenied) else logging.WARNING
                log.log(level, "agent heartbeat failed (retrying in %.0fs): %s", delay,
                        e.message if isinstance(e, AuthError) else e)

    def _due_for_renewal(self) -> bool:
        ident = self.identity
        half = ident.not_before + (ident.expires - ident.not_before) / 2
        return dt.datetime.now(dt.UTC) >= half

    # -- run ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.diag is not None:
            await self.diag.start()
        try:
            self._identity = await asyncio.to_thread(self._load_or_join)
        except BaseException:
            if self.diag is not None:
                await self.diag.close()
            raise
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

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.link.close()
        self.health.set(HEALTH, UNHEALTHY, "shutting down")
        with contextlib.suppress(AuthError, OSError, TimeoutError):
            await asyncio.wait_for(self.call("agent_goodbye"), GOODBYE_TIMEOUT)
            log.info("agent %s: unregistered", self.identity.host_id)
        if self.diag is not None:
            await self.diag.close()


async def run(config: ClusterConfig) -> None:
    agent = DatabaseAgent(config)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mwiproxy: database agent {agent.identity.host_id} serving "
          f"{', '.join(sorted(agent.engines))} on {agent.link.public_addr} for the cluster "
          f"at {agent.cluster_addr}", flush=True)
    try:
        await stop.wait()
    finally:
        await agent.close()
