"""Database agents: processes that serve databases on the cluster's behalf.

An agent joins once with a one-time ``db`` join token and gets two certificates for one
key: an identity from the *user* CA (usage ``mwi:agent``, user ``agent.<host_id>``) that it
presents to the auth API, and a server certificate from the *host* CA for the listener the
cluster proxy dials. It then heartbeats the databases it serves; a heartbeat expires after
its TTL, so a dead agent's databases drop out of ``db ls`` and routing on their own.

The heartbeat registry is kept in storage (Storage.put_agent: host id, hostname, the
address the proxies dial, the admitted databases, expiry, last heartbeat and the
fingerprint of the identity certificate it came with), so every cluster process on one
PostgreSQL storage routes to every agent, whichever process it heartbeats to, and a
restarted process finds the agents again at once. Each process reads it into a cache
(host_id → AgentRecord) at start and every REFRESH seconds (auth/agent_feed.py, off the
event loop), and writes its own heartbeats through. A registration expires by heartbeat
age as before; the one process whose conditional delete removes it audits the loss.
Which host_ids have joined, so their renewals are honoured, is kept in storage meta under
``agent:<host_id>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from mwiproxy.auth import audit
from mwiproxy.auth.agent_grants import Grant, GrantRefused, GrantStore
from mwiproxy.auth.bots import DEFAULT_TOKEN_TTL, IssuedToken, token_id
from mwiproxy.auth.errors import AccessDenied, AuthError, BadRequest, Locked, checked
from mwiproxy.auth.locks import LockService, describe
from mwiproxy.auth.storage.base import (
    AgentHeartbeat,
    LockRecord,
    Storage,
    TokenRecord,
    TokenUnusable,
)
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.config.loader import ConfigError
from mwiproxy.identity import names, oids
from mwiproxy.identity.authorities import AuthoritySet, PublicKey, cert_pem
from mwiproxy.identity.certs import Identity
from mwiproxy.wire.addr import split_host_port

TOKEN_KIND = "db"
AGENT_ROLE = "Db"  # Teleport's system role name for database agents
AGENT_USER_PREFIX = "agent."
META_PREFIX = "agent:"
DEFAULT_AGENT_TTL = dt.timedelta(hours=24)
MAX_AGENT_TTL = dt.timedelta(days=7)
DEFAULT_HEARTBEAT_TTL = 60.0
MIN_HEARTBEAT_TTL = 3.0
MAX_HEARTBEAT_TTL = 600.0
# s between reads of the shared registry: under the shortest heartbeat interval
# (MIN_HEARTBEAT_TTL / 3 is an agent's fastest beat; its TTL is what routing can miss)
REFRESH = 3.0
# Agents cache a database-client certificate per database user and reuse it for later
# sessions (engines/base.py UpstreamTLS). One may be for a superuser, so it must not
# become a long-lived key on the agent's host: a few minutes, then a new session grant.
DEFAULT_DB_CLIENT_TTL = dt.timedelta(minutes=5)
MAX_DB_CLIENT_TTL = dt.timedelta(minutes=5)
PROTOCOLS = ("postgres", "mysql", "redis", "mongodb", "cockroachdb")
MAX_HOSTS = 32
MAX_DATABASES = 1000
# Heartbeat labels are matched against every role on every request that lists or routes
# to the database: bounded, so an agent cannot make that work large.
MAX_LABELS = 64
MAX_LABEL_VALUE = 4096
_DB_KEYS = frozenset({"name", "protocol", "uri", "labels", "description"})
_HOST = re.compile(r"^[a-zA-Z0-9_]([a-zA-Z0-9._-]*[a-zA-Z0-9_])?$")


@dataclass(frozen=True)
class AgentCerts:
    host_id: str
    cert_pem: bytes  # user-CA identity the agent presents to the auth API
    server_cert_pem: bytes  # agent-CA server certificate for the agent's own listener
    expires: float  # notAfter of cert_pem, epoch seconds


@dataclass(frozen=True)
class AgentRecord:
    host_id: str
    hostname: str
    addr: str  # host:port the cluster proxy dials
    databases: tuple[DatabaseConfig, ...]
    expires: float  # heartbeat expiry, epoch seconds
    last_heartbeat: float
    cert_sha256: str = ""  # the identity certificate it last heartbeat with

    @property
    def user(self) -> str:
        return agent_user(self.host_id)

    @property
    def display_name(self) -> str:
        return self.hostname or self.host_id


def agent_user(host_id: str) -> str:
    return f"{AGENT_USER_PREFIX}{host_id}"


class AgentService:
    def __init__(
        self, storage: Storage, cas: AuthoritySet, locks: LockService, audit_log: audit.AuditLog,
        cluster: str, clock: Callable[[], float] = time.time,
        static_databases: Callable[[], Collection[str]] = tuple,
    ) -> None:
        self._storage = storage
        self._cas = cas
        self._locks = locks
        self._audit = audit_log
        self._cluster = cluster
        self._clock = clock
        self._static = static_databases
        self._registry: dict[str, AgentRecord] = {}
        self._mu = threading.Lock()
        self._grants = GrantStore(clock, shared=storage if storage.remote else None)
        locks.on_lock(self._on_lock)
        self.refresh()

    # tokens
    def add_token(self, *, ttl: float | None = None, by: str = "") -> IssuedToken:
        ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl
        if ttl <= 0:
            raise BadRequest("token TTL must be positive")
        secret = secrets.token_hex(16)
        now = self._clock()
        rec = TokenRecord(token_id(secret), TOKEN_KIND, "", now + ttl, now)
        self._storage.create_token(rec)
        self._audit.emit(audit.TOKEN_CREATE, token_id=rec.token_id[:12], kind=TOKEN_KIND,
                         expires=rec.expires, by=by)
        return IssuedToken(secret, rec)

    # join and renew
    def join(self, secret: str, public_key: PublicKey, *, hosts: list[str], hostname: str,
             ttl: dt.timedelta, remote: str = "") -> AgentCerts:
        _check_hosts(hosts, self._cluster)
        _check_hostname(hostname)
        ttl = _agent_ttl(ttl)
        kind = token_kind(self._storage, secret)
        if kind is not None and kind != TOKEN_KIND:
            # refused before use, so the operator's bot token is not burnt by a mix-up
            self._join_failed(f"this is a {kind!r} join token; a database agent needs a "
                              "--type=db token", remote)
        lock = self._locks.find(roles=(AGENT_ROLE,))
        if lock is not None:
            self._join_failed(describe(lock), remote, locked=True)
        try:
            tok = self._storage.consume_token(token_id(secret), self._clock())
        except TokenUnusable as e:
            self._join_failed(str(e), remote)
        if tok.kind != TOKEN_KIND:  # cannot happen after the check above; kept as the rule
            self._join_failed(f"this is a {tok.kind!r} join token", remote)
        host_id = str(uuid.uuid4())
        self._storage.set_meta(META_PREFIX + host_id, json.dumps(
            {"hostname": hostname, "joined": self._clock(), "token_id": tok.token_id[:12],
             "generation": 1}))
        certs = self._sign(host_id, public_key, hosts, ttl, generation=1)
        self._audit.emit(audit.AGENT_JOIN, host_id=host_id, hostname=hostname, hosts=hosts,
                         token_id=tok.token_id[:12], remote=remote, expires=certs.expires)
        return certs

    def _join_failed(self, reason: str, remote: str, *, locked: bool = False) -> NoReturn:
        self._audit.emit(audit.AGENT_JOIN_FAILED, reason=reason, remote=remote)
        raise (Locked if locked else AccessDenied)(f"join refused: {reason}")

    def renew(self, caller: Identity, public_key: PublicKey, *, hosts: list[str],
              ttl: dt.timedelta, remote: str = "") -> AgentCerts:
        host_id = self._host_id(caller)
        if not caller.renewable:
            raise AccessDenied("only a renewable agent identity can be renewed")
        self._refuse_if_locked(caller, "renew")
        _check_hosts(hosts, self._cluster)
        generation = self._next_generation(host_id, caller, remote)
        certs = self._sign(host_id, public_key, hosts, _agent_ttl(ttl), generation=generation)
        self._audit.emit(audit.AGENT_RENEW, host_id=host_id, hosts=hosts, remote=remote,
                         expires=certs.expires, generation=generation)
        return certs

    def _next_generation(self, host_id: str, caller: Identity, remote: str) -> int:
        """Like a bot's: each renewal must present the latest certificate. An older copy
        renewing means two holders of one identity — the agent is locked."""
        record = json.loads(self._storage.get_meta(META_PREFIX + host_id) or "{}")
        stored = int(record.get("generation", 0))
        if stored and caller.generation != stored:
            msg = (f"agent generation mismatch (presented {caller.generation}, expected "
                   f"{stored}): possibly a copied agent identity")
            self._audit.emit(audit.AGENT_GENERATION_MISMATCH, host_id=host_id,
                             presented=caller.generation, expected=stored, remote=remote)
            self._locks.create("user", caller.user, message=msg, by="mwiproxy")
            raise Locked(f"renewal refused and agent locked: {msg}")
        record["generation"] = stored + 1 if stored else caller.generation + 1
        self._storage.set_meta(META_PREFIX + host_id, json.dumps(record))
        return int(record["generation"])

    def _sign(self, host_id: str, public_key: PublicKey, hosts: list[str],
              ttl: dt.timedelta, *, generation: int) -> AgentCerts:
        ident = Identity(user=agent_user(host_id), roles=(AGENT_ROLE,),
                         usage=(oids.USAGE_AGENT,), renewable=True, cluster=self._cluster,
                         generation=generation)
        cert = self._cas["user"].sign_identity(ident, public_key, ttl)
        # from the agent CA, not the host CA: clients trust the host CA to name the
        # cluster proxy, and an agent must never be able to pose as it
        server = self._cas["agent"].sign_server(hosts[0], hosts, public_key, ttl)
        for c, usage in ((cert, "agent"), (server, "agent_server")):
            self._audit.emit(audit.CERT_CREATE, user=ident.user, usage=usage, host_id=host_id,
                             serial=format(c.serial_number, "x"),
                             expires=c.not_valid_after_utc.timestamp())
        return AgentCerts(host_id, cert_pem(cert), cert_pem(server),
                          cert.not_valid_after_utc.timestamp())

    # heartbeats
    def heartbeat(self, caller: Identity, *, addr: str, hostname: str,
                  databases: list[dict[str, Any]], ttl: float) -> dict[str, Any]:
        host_id = self._host_id(caller)
        self._refuse_if_locked(caller, "heartbeat")
        try:
            split_host_port(addr, min_port=1)
        except ValueError as e:
            raise BadRequest(f"addr: {e}") from None
        _check_hostname(hostname)
        if not isinstance(databases, list):
            raise BadRequest("databases must be a list")
        if len(databases) > MAX_DATABASES:
            raise BadRequest(f"an agent may serve at most {MAX_DATABASES} databases")
        ttl = _heartbeat_ttl(ttl)
        now = self._clock()
        self._prune(now)
        with self._mu:
            previous = self._registry.get(host_id)
            accepted, rejected = self._admit(host_id, databases)
            rec = AgentRecord(host_id, hostname or self._joined_hostname(host_id), addr,
                              tuple(accepted), now + ttl, now,
                              hashlib.sha256(caller.cert_der).hexdigest())
            self._registry[host_id] = rec
        self._storage.put_agent(_stored(rec))
        if previous is None or (previous.databases, previous.addr, previous.hostname) != (
                rec.databases, rec.addr, rec.hostname):
            self._audit.emit(audit.AGENT_REGISTER, host_id=host_id, hostname=rec.hostname,
                             addr=addr, databases=[d.name for d in accepted],
                             rejected=rejected)
        return {"expires": rec.expires, "accepted": [d.name for d in accepted],
                "rejected": rejected}

    def _admit(self, host_id: str, entries: list[Any]
               ) -> tuple[list[DatabaseConfig], dict[str, str]]:
        """Which of an agent's databases the cluster takes; the rest, each with why."""
        static = set(self._static())
        # several agents may serve one database (HA), but only as the same database: the
        # labels are what RBAC checks, so they must not depend on which agent came first
        others = {d.name: d for r in self._registry.values() if r.host_id != host_id
                  for d in r.databases}
        accepted: list[DatabaseConfig] = []
        rejected: dict[str, str] = {}
        for i, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry, dict) else None
            key = name if isinstance(name, str) and name else f"#{i}"
            try:
                db = parse_database(entry)
            except ValueError as e:
                rejected[key] = str(e)
                continue
            if db.name in static:
                rejected[key] = "the cluster's own config serves a database with this name"
            elif any(d.name == db.name for d in accepted):
                rejected[key] = "listed twice in one heartbeat"
            elif db.name in others and others[db.name].protocol != db.protocol:
                rejected[key] = (f"another agent serves {db.name!r} with protocol "
                                 f"{others[db.name].protocol!r}")
            elif db.name in others and others[db.name].static_labels != db.static_labels:
                rejected[key] = (f"another agent serves {db.name!r} with labels "
                                 f"{others[db.name].static_labels!r}")
            else:
                accepted.append(db)
        return accepted, rejected

    def goodbye(self, caller: Identity) -> None:
        host_id = self._host_id(caller)
        with self._mu:
            rec = self._registry.pop(host_id, None)
        self._storage.delete_agent(host_id)
        self._audit.emit(audit.AGENT_GOODBYE, host_id=host_id,
                         hostname=rec.hostname if rec else "",
                         databases=[d.name for d in rec.databases] if rec else [])

    # what the proxy engines need
    def grant_session(self, *, session_id: int, host_id: str, service: str, db_name: str,
                      db_user: str, user: str) -> str:
        """For the cluster proxy (same process), once it has authorized a session that
        agent host_id will serve: the secret that lets that agent have one database-client
        certificate for db_user on service (`auth/agent_grants.py`)."""
        return self._grants.issue(session_id=session_id, host_id=host_id, service=service,
                                  db_name=db_name, db_user=db_user, user=user)

    def sign_db_client(self, caller: Identity, db_user: str, public_key: PublicKey,
                       ttl: dt.timedelta, *, service: str = "", grant: str = "") -> bytes:
        """A certificate for db_user on service, only with a grant the proxy gave this
        agent for a session it authorized; every refusal is audited."""
        host_id = ""
        try:
            host_id = self._host_id(caller)
            session = self._check_sign(caller, host_id, db_user, service, grant)
            ttl = min(ttl, MAX_DB_CLIENT_TTL)
            if caller.expires is not None:  # never outlive the identity that asked
                ttl = min(ttl, caller.expires - dt.datetime.now(dt.UTC))
            if ttl <= dt.timedelta(0):
                raise BadRequest("ttl must be positive")
        except AuthError as e:  # what was asked, cut short: it may be an attacker's junk
            self._audit.emit(audit.AGENT_SIGN_DENIED, user=caller.user, host_id=host_id,
                             db_service=str(service)[:256], db_user=str(db_user)[:256],
                             reason=e.message)
            raise
        cert = self._cas["db_client"].sign_database_user(db_user, public_key, ttl)
        self._audit.emit(audit.CERT_CREATE, user=caller.user, usage="db_client",
                         db_user=db_user, db_service=service, db_name=session.db_name,
                         session_id=session.session_id, for_user=session.user,
                         host_id=host_id, serial=format(cert.serial_number, "x"),
                         expires=cert.not_valid_after_utc.timestamp())
        return cert_pem(cert)

    def _check_sign(self, caller: Identity, host_id: str, db_user: str, service: str,
                    grant: str) -> Grant:
        """The rule for sign_db_client; the grant it consumed, or an AuthError."""
        self._refuse_if_locked(caller, "sign_db_client")
        if not isinstance(db_user, str) or not db_user or len(db_user) > 256 \
                or not db_user.isprintable():
            raise BadRequest("db_user must be a non-empty printable string")
        try:
            session = self._grants.consume(grant, host_id=host_id, service=service,
                                           db_user=db_user)
        except GrantRefused as e:
            raise AccessDenied(f"sign_db_client refused: {e}") from None
        if not any(d.name == service for r in self.live() if r.host_id == host_id
                   for d in r.databases):
            raise AccessDenied(f"sign_db_client refused: agent {host_id} does not serve "
                               f"database {service!r} (register it with a heartbeat first)")
        return session

    def live(self) -> list[AgentRecord]:
        """The registrations not expired (from the cache: no storage read)."""
        now = self._clock()
        if not self._storage.remote:  # a local write: the loss is audited at first look
            self._prune(now)
        with self._mu:
            return [r for r in self._registry.values() if r.expires > now]

    def refresh(self) -> None:
        """Re-read the shared registry (start, then every REFRESH s: auth/agent_feed.py);
        the expired registrations are removed and their loss audited."""
        started = self._clock()
        stored = {}
        for row in self._storage.list_agents():
            rec = _loaded(row)
            if rec is not None:
                stored[rec.host_id] = rec
        with self._mu:
            for host_id, mine in self._registry.items():
                # a heartbeat this process took while the rows were read
                if mine.last_heartbeat > started or (
                        host_id in stored and mine.last_heartbeat > stored[host_id].last_heartbeat):
                    stored[host_id] = mine
            self._registry = stored
        self._prune(self._clock())

    def servers_for(self, name: str) -> list[tuple[AgentRecord, DatabaseConfig]]:
        return [(r, d) for r in self.live() for d in r.databases if d.name == name]

    # helpers
    def _prune(self, now: float) -> None:
        """Drop expired heartbeats; each loss is audited once, by the process that
        removed it from storage."""
        with self._mu:
            gone = [r for r in self._registry.values() if r.expires <= now]
            for rec in gone:
                del self._registry[rec.host_id]
        for rec in gone:
            if self._storage.delete_agent(rec.host_id, expired_at=now):
                self._audit.emit(audit.AGENT_LOST, host_id=rec.host_id,
                                 hostname=rec.hostname,
                                 databases=[d.name for d in rec.databases],
                                 reason="heartbeat expired")

    def _on_lock(self, lock: LockRecord) -> None:
        """A new lock on an agent (or on all agents) takes its databases away at once."""
        with self._mu:
            hit = [r for r in self._registry.values()
                   if (lock.target_kind, lock.target) in (("user", r.user), ("role", AGENT_ROLE))]
            for rec in hit:
                del self._registry[rec.host_id]
        for rec in hit:
            # every process hears of the lock (auth/lock_feed.py): one removes and audits
            if self._storage.delete_agent(rec.host_id):
                    self._audit.emit(audit.AGENT_LOST, host_id=rec.host_id,
                                 hostname=rec.hostname,
                                 databases=[d.name for d in rec.databases],
                                 reason=describe(lock))

    def _host_id(self, caller: Identity) -> str:
        """The host_id an agent identity speaks for; refused unless it joined this cluster."""
        if oids.USAGE_AGENT not in caller.usage or not caller.user.startswith(AGENT_USER_PREFIX):
            raise AccessDenied("this needs a database agent identity")
        host_id = caller.user[len(AGENT_USER_PREFIX):]
        if self._storage.get_meta(META_PREFIX + host_id) is None:
            raise AccessDenied(f"agent {host_id!r} has not joined cluster {self._cluster!r}")
        return host_id

    def _joined_hostname(self, host_id: str) -> str:
        raw = self._storage.get_meta(META_PREFIX + host_id)
        try:
            return str(json.loads(raw or "{}").get("hostname", ""))
        except (ValueError, AttributeError):
            return ""

    def _refuse_if_locked(self, caller: Identity, action: str) -> None:
        lock = self._locks.find(user=caller.user, roles=caller.roles)
        if lock is not None:
            raise Locked(f"{action} refused: {describe(lock)}")


def _stored(rec: AgentRecord) -> AgentHeartbeat:
    return AgentHeartbeat(rec.host_id, rec.hostname, rec.addr,
                          [_entry(d) for d in rec.databases], rec.expires,
                          rec.last_heartbeat, rec.cert_sha256)


def _entry(db: DatabaseConfig) -> dict[str, Any]:
    """A database as a heartbeat gives it (what parse_database reads back)."""
    return {"name": db.name, "protocol": db.protocol, "uri": db.uri,
            "labels": dict(db.static_labels), "description": db.description}


def _loaded(row: AgentHeartbeat) -> AgentRecord | None:
    """A stored registration, checked again as a heartbeat is (None: not usable; a
    newer mwiproxy may have written it)."""
    try:
        split_host_port(row.addr, min_port=1)
        dbs = tuple(parse_database(d) for d in row.databases)
    except (ValueError, TypeError):
        return None
    return AgentRecord(row.host_id, row.hostname, row.addr, dbs, float(row.expires),
                       float(row.last_heartbeat), row.cert_sha256)


def token_kind(storage: Storage, secret: str) -> str | None:
    """The kind of a join token, without using it (None when unknown)."""
    tid = token_id(secret)
    return next((t.kind for t in storage.list_tokens() if t.token_id == tid), None)


def parse_database(entry: Any) -> DatabaseConfig:
    """One heartbeat entry, checked as strictly as cluster.yaml; ValueError says why."""
    if not isinstance(entry, dict):
        raise ValueError("a database entry must be an object")
    unknown = sorted(set(entry) - _DB_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    for key in ("name", "protocol", "uri"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"{key!r} must be a non-empty string")
    if entry["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol {entry['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items()):
        raise ValueError("labels must map non-empty strings to strings")
    _check_label_values(labels)
    description = entry.get("description") or ""
    if not isinstance(description, str):
        raise ValueError("description must be a string")
    db = DatabaseConfig(name=entry["name"], protocol=cast(Any, entry["protocol"]),
                        uri=entry["uri"], description=description, static_labels=dict(labels))
    try:
        db.validate()
    except ConfigError as e:
        raise ValueError(f"{e.key}: {e.message}" if e.key else e.message) from None
    return db


def _check_label_values(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels: at most {MAX_LABELS}")
    for key, value in labels.items():
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key[:64]!r}: value longer than {MAX_LABEL_VALUE} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON allows it, no database has it
            raise ValueError(f"label {key[:64]!r}: value is not valid Unicode") from None


def _check_hosts(hosts: list[str], cluster: str) -> None:
    if not isinstance(hosts, list) or not hosts:
        raise BadRequest("at least one host name or address is needed")
    if len(hosts) > MAX_HOSTS:
        raise BadRequest(f"at most {MAX_HOSTS} hosts")
    for h in hosts:
        if not isinstance(h, str) or not (_is_ip(h) or (_HOST.fullmatch(h) and len(h) <= 253)):
            raise BadRequest(f"host {h!r} is not a valid host name or IP address")
        if h == cluster:  # the proxy's own certificate carries the cluster name
            raise BadRequest(f"host {h!r} is the cluster's name; an agent cannot claim it")


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def _check_hostname(hostname: str) -> None:
    if hostname != "":  # "" is not told: the one given at join is kept
        checked(names.agent_hostname, hostname)


def _agent_ttl(ttl: dt.timedelta) -> dt.timedelta:
    if ttl <= dt.timedelta(0):
        raise BadRequest("ttl must be positive")
    return min(ttl, MAX_AGENT_TTL)


def _heartbeat_ttl(ttl: Any) -> float:
    if ttl is None or ttl == 0:
        return DEFAULT_HEARTBEAT_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl != ttl:
        raise BadRequest("ttl must be a number of seconds")
    return float(min(max(ttl, MIN_HEARTBEAT_TTL), MAX_HEARTBEAT_TTL))
