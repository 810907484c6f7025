"""The auth service: the API handlers behind the `mwi-auth` ALPN protocol.

Each handler takes the caller's verified identity (None before a bot has joined) and the
request parameters, and returns a JSON-able result or raises an AuthError. Who may call
what is decided here, once, in `_METHODS`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mwiproxy
from mwiproxy.auth import audit
from mwiproxy.auth.agents import (
    DEFAULT_AGENT_TTL,
    DEFAULT_DB_CLIENT_TTL,
    AgentCerts,
    AgentRecord,
    AgentService,
    token_kind,
)
from mwiproxy.auth.bots import BotService, bot_user
from mwiproxy.auth.errors import AccessDenied, AlreadyExists, AuthError, BadRequest, NotFound
from mwiproxy.auth.locks import LockService, describe
from mwiproxy.auth.rbac import check_database_access, check_rule, match_labels
from mwiproxy.auth.roles import Role, parse_roles
from mwiproxy.auth.storage.base import Storage
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.config.durations import parse_duration
from mwiproxy.config.loader import ConfigError
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import AuthoritySet, cert_pem, load_public_key
from mwiproxy.identity.certs import DatabaseRoute, Identity

DEFAULT_BOT_TTL = dt.timedelta(hours=1)
MAX_PARSED_ROLES = 1024
DEFAULT_DB_TTL = dt.timedelta(hours=1)
MAX_DB_SERVER_TTL = dt.timedelta(days=3650)

Caller = Identity | None


@dataclass
class Request:
    caller: Caller
    params: dict[str, Any]
    remote: str = ""

    def text(self, key: str, default: str | None = None) -> str:
        v = self.params.get(key, default)
        if not isinstance(v, str):
            raise BadRequest(f"parameter {key!r} must be a string")
        return v

    def strings(self, key: str) -> list[str]:
        v = self.params.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadRequest(f"parameter {key!r} must be a list of strings")
        return v

    def duration(self, key: str, default: dt.timedelta) -> dt.timedelta:
        v = self.params.get(key)
        if v in (None, ""):
            return default
        try:
            return parse_duration(v)
        except ValueError as e:
            raise BadRequest(f"parameter {key!r}: {e}") from None

    @property
    def who(self) -> str:
        return self.caller.user if self.caller else "anonymous"


class AuthService:
    def __init__(
        self, *, cluster: str, storage: Storage, cas: AuthoritySet,
        databases: list[DatabaseConfig], public_addr: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.storage = storage
        self.cas = cas
        self.databases = {d.name: d for d in databases}
        self.public_addr = public_addr
        self.clock = clock
        self.audit = audit.AuditLog(storage, clock)
        self._parsed_roles: dict[str, Role] = {}
        self.locks = LockService(storage, self.audit, clock)
        self.bots = BotService(storage, cas, self.locks, self.audit, cluster, clock)
        self.agents = AgentService(storage, cas, self.locks, self.audit, cluster, clock,
                                   static_databases=lambda: self.databases.keys())

    # dispatch
    def call(self, method: str, caller: Caller, params: dict[str, Any], remote: str = "") -> Any:
        entry = _METHODS.get(method)
        if entry is None:
            raise BadRequest(f"unknown method {method!r}")
        who, handler = entry
        req = Request(caller, params, remote)
        self._authorize(method, who, req)
        return handler(self, req)

    def _authorize(self, method: str, who: str, req: Request) -> None:
        c = req.caller
        if who == "anyone":
            return
        if c is not None and c.route is not None and who != "anyone":
            # a database certificate is good for its database and nothing else
            self._deny(method, req, "a database certificate cannot call the auth API")
        if who == "admin" and not (c and c.is_admin):
            self._deny(method, req, "this needs the cluster admin identity")
        if who == "bot" and not (c and c.is_bot):
            self._deny(method, req, "this needs a bot identity")
        if who == "agent" and not (c and oids.USAGE_AGENT in c.usage):
            self._deny(method, req, "this needs a database agent identity")
        if who == "identity" and c is None:
            self._deny(method, req, "this needs a client certificate")

    def _deny(self, method: str, req: Request, why: str) -> None:
        self.audit.emit(audit.AUTH_DENIED, method=method, user=req.who, reason=why,
                        remote=req.remote)
        raise AccessDenied(f"{method}: {why}")

    # helpers
    def roles_for(self, names: list[str]) -> list[Role]:
        """The stored roles of those names (unknown names skipped). Storage is read every
        time, so an edited role counts at once; the parsed Role is reused while the stored
        text is unchanged (parsing re-runs every check of a role file, which is far too
        slow to do on every connection)."""
        roles = []
        for n in names:
            d = self.storage.get_role(n)
            if d is None:
                continue
            key = json.dumps(d, sort_keys=True)
            role = self._parsed_roles.get(key)
            if role is None:
                if len(self._parsed_roles) >= MAX_PARSED_ROLES:
                    self._parsed_roles.clear()
                role = self._parsed_roles[key] = Role.from_dict(d)
            roles.append(role)
        return roles

    def ca_bundle(self) -> dict[str, str]:
        return {k: self.cas[k].cert_pem.decode() for k in ("host", "user", "db", "db_client")}

    def database(self, name: str) -> DatabaseConfig:
        """The cluster's own database of that name, else the first live agent's."""
        db = self.databases.get(name)
        if db is not None:
            return db
        served = self.agents.servers_for(name)
        if served:
            return served[0][1]
        raise NotFound(f"database service {name!r} is not served by cluster {self.cluster!r}")

    def authorize_database(self, caller: Identity, route: DatabaseRoute) -> list[str]:
        """RBAC + locks for a bot using a database; returns the roles that were checked."""
        bot = self.bots.get(caller.bot_name) if caller.bot_name else None
        role_names = bot.roles if bot else list(caller.roles)
        lock = self.locks.find(bot=caller.bot_name, user=caller.user, roles=role_names)
        if lock is not None:
            raise AccessDenied(describe(lock))
        db = self.database(route.service)
        decision = check_database_access(
            self.roles_for(role_names), db_labels=dict(db.static_labels),
            db_name=route.database, db_user=route.username,
            traits=bot.traits if bot else caller.traits, db_service=route.service,
        )
        if not decision.allowed:
            raise AccessDenied(decision.reason)
        return role_names


# ---- handlers -------------------------------------------------------------------------

def _ping(s: AuthService, r: Request) -> Any:
    return {"cluster_name": s.cluster, "version": mwiproxy.__version__,
            "host_ca_pin": s.cas.host_pin, "public_addr": s.public_addr,
            "you": r.caller.user if r.caller else None}


def _get_cas(s: AuthService, r: Request) -> Any:
    return s.ca_bundle()


def _join(s: AuthService, r: Request) -> Any:
    key = _public_key(r)
    kind = token_kind(s.storage, r.text("token"))
    if kind not in (None, "bot"):  # refused before use: the agent's token stays good
        why = f"this is a {kind!r} join token; a bot needs a --type=bot token"
        s.audit.emit(audit.BOT_JOIN_FAILED, reason=why, remote=r.remote)
        raise AccessDenied(f"join refused: {why}")
    ident, pem = s.bots.join(r.text("token"), key, r.duration("ttl", DEFAULT_BOT_TTL), r.remote)
    return {"cert": pem.decode(), "cas": s.ca_bundle(), "bot": ident.bot_name}


def _renew(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    key = _public_key(r)
    ident, pem = s.bots.renew(r.caller, key, r.duration("ttl", DEFAULT_BOT_TTL), r.remote)
    return {"cert": pem.decode(), "cas": s.ca_bundle(), "generation": ident.generation}


def _issue_database_cert(s: AuthService, r: Request) -> Any:
    caller = r.caller
    assert caller is not None
    key = _public_key(r)
    service = r.text("service")
    db = s.database(service)
    username = r.text("username", "")
    if db.protocol == "redis" and not username:
        username = "default"
    route = DatabaseRoute(service, db.protocol, username, r.text("database", ""))
    try:
        roles = s.authorize_database(caller, route)
    except AuthError as e:
        s.audit.emit(audit.CERT_DENIED, user=caller.user, db_service=service,
                     db_user=route.username, db_name=route.database, reason=e.message)
        raise
    ttl = r.duration("ttl", DEFAULT_DB_TTL)
    max_ttls = [role.max_session_ttl for role in s.roles_for(roles)]
    if max_ttls:  # the strictest role wins
        ttl = min(ttl, *max_ttls)
    if caller.expires is not None:  # never outlive the identity that asked
        ttl = min(ttl, caller.expires - dt.datetime.now(dt.UTC))
    ident = Identity(user=caller.user, roles=tuple(roles), usage=(oids.USAGE_DATABASE,),
                     route=route, bot_name=caller.bot_name, cluster=s.cluster)
    cert = s.cas["user"].sign_identity(ident, key, ttl)
    s.audit.emit(audit.CERT_CREATE, user=caller.user, usage="db", db_service=service,
                 db_user=route.username, db_name=route.database,
                 serial=format(cert.serial_number, "x"),
                 expires=cert.not_valid_after_utc.timestamp())
    return {"cert": cert_pem(cert).decode(), "cas": s.ca_bundle()}


def _public_key(r: Request) -> Any:
    try:
        return load_public_key(r.text("public_key").encode())
    except (ValueError, TypeError) as e:
        raise BadRequest(f"public_key: {e}") from None


def _create_roles(s: AuthService, r: Request) -> Any:
    try:
        roles = parse_roles(r.text("yaml"), r.text("filename", "role.yaml"))
    except ConfigError as e:
        raise BadRequest(str(e)) from None
    force = bool(r.params.get("force"))
    done = []
    for role in roles:
        if not s.storage.put_role(role.name, role.to_dict(), overwrite=force):
            raise AlreadyExists(f"role {role.name!r} already exists (use --force to replace it)")
        s.audit.emit(audit.ROLE_CREATE, role=role.name, by=r.who)
        done.append(role.name)
    return {"created": done}


def _get_roles(s: AuthService, r: Request) -> Any:
    return [Role.from_dict(d).to_dict() for d in s.storage.list_roles()]


def _get_role(s: AuthService, r: Request) -> Any:
    d = s.storage.get_role(r.text("name"))
    if d is None:
        raise NotFound(f"role {r.text('name')!r} not found")
    return Role.from_dict(d).to_dict()


def _delete_role(s: AuthService, r: Request) -> Any:
    name = r.text("name")
    users = [b.name for b in s.bots.list_bots() if name in b.roles]
    if users:
        raise BadRequest(f"role {name!r} is used by bot(s) {', '.join(users)}; "
                         "remove it from them first")
    if not s.storage.delete_role(name):
        raise NotFound(f"role {name!r} not found")
    s.audit.emit(audit.ROLE_DELETE, role=name, by=r.who)
    return {"deleted": name}


def _bot_dict(b: Any) -> dict[str, Any]:
    return {"name": b.name, "user": bot_user(b.name), "roles": b.roles,
            "generation": b.generation, "created": b.created, "last_seen": b.last_seen}


def _bots_add(s: AuthService, r: Request) -> Any:
    ttl = r.duration("token_ttl", dt.timedelta(hours=1)).total_seconds()
    bot, tok = s.bots.add(r.text("name"), r.strings("roles"), token_ttl=ttl, by=r.who)
    return {"bot": _bot_dict(bot), "token": tok.secret, "token_expires": tok.record.expires}


def _bots_update(s: AuthService, r: Request) -> Any:
    set_roles = r.strings("set_roles") if "set_roles" in r.params else None
    bot = s.bots.update(r.text("name"), add=r.strings("add_roles"), remove=r.strings("remove_roles"),
                        set_roles=set_roles, by=r.who)
    return _bot_dict(bot)


def _bots_ls(s: AuthService, r: Request) -> Any:
    return [_bot_dict(b) for b in s.bots.list_bots()]


def _bots_rm(s: AuthService, r: Request) -> Any:
    s.bots.remove(r.text("name"), by=r.who)
    return {"deleted": r.text("name")}


def _tokens_add(s: AuthService, r: Request) -> Any:
    kind = r.text("type", "bot")
    ttl = r.duration("ttl", dt.timedelta(hours=1)).total_seconds()
    if kind == "bot":
        tok = s.bots.add_token(r.text("bot_name"), ttl=ttl, by=r.who)
    elif kind == "db":
        tok = s.agents.add_token(ttl=ttl, by=r.who)
    else:
        raise BadRequest(f"token type {kind!r}: use bot or db")
    return {"token": tok.secret, "id": tok.record.token_id[:12], "expires": tok.record.expires,
            "bot_name": tok.record.bot_name, "type": tok.record.kind}


def _tokens_ls(s: AuthService, r: Request) -> Any:
    now = s.clock()
    return [{"id": t.token_id[:12], "type": t.kind, "bot_name": t.bot_name,
             "expires": t.expires, "used": t.used_at is not None, "expired": t.expires <= now}
            for t in s.bots.list_tokens()]


def _tokens_rm(s: AuthService, r: Request) -> Any:
    s.bots.remove_token(r.text("token"), by=r.who)
    return {"deleted": True}


def _lock(s: AuthService, r: Request) -> Any:
    ttl = r.params.get("ttl")
    secs = parse_duration(ttl).total_seconds() if ttl else None
    lock = s.locks.create(r.text("target_kind"), r.text("target"),
                          message=r.text("message", ""), ttl=secs, by=r.who)
    return _lock_dict(lock)


def _lock_dict(lock: Any) -> dict[str, Any]:
    return {"id": lock.lock_id, "target_kind": lock.target_kind, "target": lock.target,
            "message": lock.message, "expires": lock.expires, "created": lock.created}


def _locks_ls(s: AuthService, r: Request) -> Any:
    return [_lock_dict(lk) for lk in s.locks.active()]


def _locks_rm(s: AuthService, r: Request) -> Any:
    if not s.locks.remove(r.text("id"), by=r.who):
        raise NotFound(f"lock {r.text('id')!r} not found")
    return {"deleted": r.text("id")}


def _audit(s: AuthService, r: Request) -> Any:
    since = r.params.get("since")
    limit = int(r.params.get("limit") or 1000)
    events = s.audit.query(since=float(since) if since is not None else None,
                           types=r.strings("types") or None, limit=limit)
    return [{"id": e.event_id, "time": e.time, "type": e.type, **e.fields} for e in events]


def _visible(s: AuthService, caller: Identity, labels: dict[str, str]) -> bool:
    """A non-admin sees a database when its roles may list dbs and some role's allow
    labels match it (and no deny labels do) — what `tsh db ls` shows."""
    if caller.is_admin:
        return True
    bot = s.storage.get_bot(caller.bot_name) if caller.bot_name else None
    roles = s.roles_for(bot.roles if bot else list(caller.roles))
    if not check_rule(roles, "db", "list"):
        return False
    if any(r.deny.db_labels and match_labels(r.deny.db_labels, labels)[0] for r in roles):
        return False
    return any(match_labels(r.allow.db_labels, labels)[0] for r in roles)


def _db_ls(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    served: dict[str, tuple[DatabaseConfig, list[str]]] = {}
    for db in s.databases.values():
        served[db.name] = (db, [])
    for agent, db in ((a, d) for a in s.agents.live() for d in a.databases):
        if db.name in s.databases:
            continue  # the cluster's own config wins (heartbeats are refused such names)
        served.setdefault(db.name, (db, []))[1].append(agent.display_name)
    out = []
    for db, agents in served.values():
        if not _visible(s, r.caller, dict(db.static_labels)):
            continue
        out.append({"name": db.name, "protocol": db.protocol, "uri": db.uri,
                    "labels": dict(db.static_labels), "description": db.description,
                    "agents": agents})
    return out


def _sign_db_server(s: AuthService, r: Request) -> Any:
    hosts = [h for h in r.strings("hosts") if h]
    if not hosts:
        raise BadRequest("at least one --host is needed")
    ttl = r.duration("ttl", dt.timedelta(days=90))
    if ttl > MAX_DB_SERVER_TTL:
        raise BadRequest("ttl is longer than the database CA allows")
    cert = s.cas["db"].sign_server(hosts[0], hosts, _public_key(r), ttl)
    s.audit.emit(audit.CERT_CREATE, usage="db_server", hosts=hosts, by=r.who,
                 serial=format(cert.serial_number, "x"),
                 expires=cert.not_valid_after_utc.timestamp())
    return {"cert": cert_pem(cert).decode(), "cas": s.cas["db_client"].cert_pem.decode(),
            "db_ca": s.cas["db"].cert_pem.decode()}


def _status(s: AuthService, r: Request) -> Any:
    return {**_ping(s, r), "bots": len(s.bots.list_bots()), "roles": len(s.storage.list_roles()),
            "databases": len(s.databases), "locks": len(s.locks.active()),
            "agents": len(s.agents.live())}


# ---- database agents ------------------------------------------------------------------

def _agent_certs(s: AuthService, c: AgentCerts) -> dict[str, Any]:
    return {"host_id": c.host_id, "cert": c.cert_pem.decode(),
            "server_cert": c.server_cert_pem.decode(), "cas": s.ca_bundle(),
            "expires": c.expires}


def _agent_hosts(r: Request) -> list[str]:
    return r.strings("hosts") if r.params.get("hosts") else ["localhost", "127.0.0.1"]


def _agent_join(s: AuthService, r: Request) -> Any:
    certs = s.agents.join(r.text("token"), _public_key(r), hosts=_agent_hosts(r),
                          hostname=r.text("hostname", ""),
                          ttl=r.duration("ttl", DEFAULT_AGENT_TTL), remote=r.remote)
    return _agent_certs(s, certs)


def _agent_renew(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    certs = s.agents.renew(r.caller, _public_key(r), hosts=_agent_hosts(r),
                           ttl=r.duration("ttl", DEFAULT_AGENT_TTL), remote=r.remote)
    return _agent_certs(s, certs)


def _agent_heartbeat(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    dbs = r.params.get("databases") or []
    if not isinstance(dbs, list):
        raise BadRequest("parameter 'databases' must be a list")
    return s.agents.heartbeat(r.caller, addr=r.text("addr"), hostname=r.text("hostname", ""),
                              databases=dbs, ttl=r.params.get("ttl") or 0)


def _agent_goodbye(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    s.agents.goodbye(r.caller)
    return {"ok": True}


def _agent_sign_db_client(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    pem = s.agents.sign_db_client(r.caller, r.text("db_user"), _public_key(r),
                                  r.duration("ttl", DEFAULT_DB_CLIENT_TTL))
    return {"cert": pem.decode(), "db_ca": s.cas["db"].cert_pem.decode()}


def _agent_dict(a: AgentRecord) -> dict[str, Any]:
    return {"host_id": a.host_id, "hostname": a.hostname, "addr": a.addr,
            "databases": [d.name for d in a.databases], "expires": a.expires,
            "last_heartbeat": a.last_heartbeat}


def _agents_ls(s: AuthService, r: Request) -> Any:
    return [_agent_dict(a) for a in s.agents.live()]


_METHODS: dict[str, tuple[str, Callable[[AuthService, Request], Any]]] = {
    "ping": ("anyone", _ping),
    "get_cas": ("anyone", _get_cas),
    "join": ("anyone", _join),
    "renew": ("bot", _renew),
    "issue_database_cert": ("bot", _issue_database_cert),
    "status": ("admin", _status),
    "create_roles": ("admin", _create_roles),
    "get_roles": ("admin", _get_roles),
    "get_role": ("admin", _get_role),
    "delete_role": ("admin", _delete_role),
    "bots_add": ("admin", _bots_add),
    "bots_update": ("admin", _bots_update),
    "bots_ls": ("admin", _bots_ls),
    "bots_rm": ("admin", _bots_rm),
    "tokens_add": ("admin", _tokens_add),
    "tokens_ls": ("admin", _tokens_ls),
    "tokens_rm": ("admin", _tokens_rm),
    "lock": ("admin", _lock),
    "locks_ls": ("admin", _locks_ls),
    "locks_rm": ("admin", _locks_rm),
    "audit": ("admin", _audit),
    "db_ls": ("identity", _db_ls),
    "sign_db_server": ("admin", _sign_db_server),
    "agent_join": ("anyone", _agent_join),
    "agent_renew": ("agent", _agent_renew),
    "agent_heartbeat": ("agent", _agent_heartbeat),
    "agent_goodbye": ("agent", _agent_goodbye),
    "agent_sign_db_client": ("agent", _agent_sign_db_client),
    "agents_ls": ("admin", _agents_ls),
}
