"""The auth API methods of bots and the admin, and the table of every method with who
may call it (`METHODS`; the service checks the caller against it before a handler runs).

Each handler takes the service and the request and returns a JSON-able result or raises
an AuthError.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mwiproxy
from mwiproxy.auth import audit
from mwiproxy.auth.agent_handlers import AGENT_METHODS
from mwiproxy.auth.agents import token_kind
from mwiproxy.auth.bots import bot_user
from mwiproxy.auth.ca_rotation import DEFAULT_GRACE_PERIOD
from mwiproxy.auth.errors import (
    AccessDenied,
    AlreadyExists,
    AuthError,
    BadRequest,
    NotFound,
    checked,
)
from mwiproxy.auth.rbac import check_rule, match_labels
from mwiproxy.auth.request import Request
from mwiproxy.auth.roles import Role, parse_roles
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.config.durations import format_duration, parse_duration
from mwiproxy.config.loader import ConfigError
from mwiproxy.identity import names, oids
from mwiproxy.identity.authorities import cert_pem
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.wire.frames import MAX_FRAME

if TYPE_CHECKING:
    from mwiproxy.auth.service import AuthService

log = logging.getLogger("mwiproxy.auth")

DEFAULT_BOT_TTL = dt.timedelta(hours=1)
DEFAULT_DB_TTL = dt.timedelta(hours=1)
DEFAULT_TOKEN_TTL = dt.timedelta(hours=1)
MAX_DB_SERVER_TTL = dt.timedelta(days=3650)
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # proxy/sessions.py Session.audit_id



def _ping(s: AuthService, r: Request) -> Any:
    return {"cluster_name": s.cluster, "version": mwiproxy.__version__,
            "host_ca_pin": s.cas.host_pin, "host_ca_pins": s.cas.host_pins,
            "public_addr": s.public_addr,
            "you": r.caller.user if r.caller else None}


def _get_cas(s: AuthService, r: Request) -> Any:
    return s.ca_bundle()


def _join(s: AuthService, r: Request) -> Any:
    key = r.public_key()
    kind = token_kind(s.storage, r.text("token"))
    if kind not in (None, "bot"):  # refused before use: the agent's token stays good
        why = f"this is a {kind!r} join token; a bot needs a --type=bot token"
        s.audit.emit(audit.BOT_JOIN_FAILED, reason=why, remote=r.remote)
        raise AccessDenied(f"join refused: {why}")
    ident, pem = s.bots.join(r.text("token"), key, r.duration("ttl", DEFAULT_BOT_TTL), r.remote)
    return {"cert": pem.decode(), "cas": s.ca_bundle(), "bot": ident.bot_name}


def _renew(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    key = r.public_key()
    ident, pem = s.bots.renew(r.caller, key, r.duration("ttl", DEFAULT_BOT_TTL), r.remote)
    return {"cert": pem.decode(), "cas": s.ca_bundle(), "generation": ident.generation}


def _issue_database_cert(s: AuthService, r: Request) -> Any:
    caller = r.caller
    assert caller is not None
    key = r.public_key()
    service = r.text("service")
    db = s.database(service)
    username = r.text("username", "")
    if db.protocol == "redis" and not username:
        username = "default"
    route = DatabaseRoute(service, db.protocol, username, r.text("database", ""))
    try:
        checked(names.database_route, service, db.protocol, route.username, route.database)
        roles = s.authorize_database(caller, route)
    except AuthError as e:
        s.audit.emit(audit.CERT_DENIED, user=caller.user, db_service=service,
                     db_user=route.username, db_name=route.database, reason=e.message)
        raise
    ttl = min(r.duration("ttl", DEFAULT_DB_TTL), s.limits.max_certificate_ttl)
    max_ttls = [role.max_session_ttl for role in s.roles_for(roles)]
    if max_ttls:  # the strictest role wins
        ttl = min(ttl, *max_ttls)
    if caller.expires is not None:  # never outlive the identity that asked
        ttl = min(ttl, caller.expires - dt.datetime.now(dt.UTC))
    # the issuing generation and lineage go along: the proxy refuses the certificate
    # once the bot has moved on (stale_bot_identity)
    ident = Identity(user=caller.user, roles=tuple(roles), usage=(oids.USAGE_DATABASE,),
                     route=route, bot_name=caller.bot_name, cluster=s.cluster,
                     generation=caller.generation, bot_instance_id=caller.bot_instance_id)
    cert = s.cas["user"].sign_identity(ident, key, ttl)
    s.audit.emit(audit.CERT_CREATE, user=caller.user, usage="db", db_service=service,
                 db_user=route.username, db_name=route.database,
                 serial=format(cert.serial_number, "x"),
                 expires=cert.not_valid_after_utc.timestamp())
    return {"cert": cert_pem(cert).decode(), "cas": s.ca_bundle()}


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
    ttl = _token_ttl(s, r, "token_ttl")
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
    ttl = _token_ttl(s, r, "ttl")
    if kind == "bot":
        tok = s.bots.add_token(r.text("bot_name"), ttl=ttl, by=r.who)
    elif kind == "db":
        tok = s.agents.add_token(ttl=ttl, by=r.who)
    else:
        raise BadRequest(f"token type {kind!r}: use bot or db")
    return {"token": tok.secret, "id": tok.record.token_id[:12], "expires": tok.record.expires,
            "bot_name": tok.record.bot_name, "type": tok.record.kind}


def _token_ttl(s: AuthService, r: Request, key: str) -> float:
    """A join token's lifetime in seconds: positive and within auth.max_token_ttl (a
    token is a bearer secret; one that lives for years is a standing credential)."""
    ttl = r.duration(key, DEFAULT_TOKEN_TTL)
    limit = s.limits.max_token_ttl
    if ttl <= dt.timedelta(0):
        raise BadRequest("the token TTL must be positive")
    if ttl > limit:
        raise BadRequest(f"a token TTL of {format_duration(ttl)} is longer than this "
                         f"cluster allows ({format_duration(limit)}, auth.max_token_ttl "
                         "in cluster.yaml)")
    return ttl.total_seconds()


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


def _positive_int(r: Request, key: str) -> int | None:
    value = r.params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{key}: expected a positive integer, got {value!r}")
    return value


def _audit(s: AuthService, r: Request) -> Any:
    """The newest `limit` matching events, oldest first, as many as fit in one frame;
    `before` (an event id) pages back: the caller asks again with the oldest id it got
    until a reply comes back empty (mwictl's audit_events)."""
    since = r.params.get("since")
    limit = _positive_int(r, "limit") or 1000
    before = _positive_int(r, "before")
    session = r.text("session", "") or None
    if session is not None and not _SESSION_ID.fullmatch(session):
        raise BadRequest(f"session {session!r}: expected a session id (32 hex digits, the "
                         "`session` field of db.session.* events)")
    events = s.audit.query(since=float(since) if since is not None else None,
                           types=r.strings("types") or None, limit=limit, session=session,
                           before=before)
    return newest_that_fit(
        [{"id": e.event_id, "time": e.time, "type": e.type, **e.fields} for e in events])


# what an audit reply may take of one frame (the rest: the reply's envelope)
AUDIT_REPLY_BUDGET = MAX_FRAME - 64 * 1024


def newest_that_fit(events: list[dict[str, Any]], budget: int = AUDIT_REPLY_BUDGET
                    ) -> list[dict[str, Any]]:
    """The newest events (the list is oldest first) whose JSON fits in one auth API
    frame: query events carry statements of up to 16 KiB, so `limit` events can be
    more than a frame holds; the oldest are left out (ask again with `before` set to
    the oldest id returned to page back) and the trim is logged."""
    total, keep = 0, 0
    for event in reversed(events):
        total += len(json.dumps(event, separators=(",", ":"))) + 1
        if total > budget:
            break
        keep += 1
    if keep < len(events):
        log.info("audit reply: the newest %d of %d events fit in one frame", keep, len(events))
    return events[len(events) - keep:]


def _caller_roles(s: AuthService, caller: Identity) -> list[Role] | None:
    """The roles db_ls judges by, read once per call (agents may serve a thousand
    databases each); None for the admin, who sees everything."""
    if caller.is_admin:
        return None
    bot = s.storage.get_bot(caller.bot_name) if caller.bot_name else None
    return s.roles_for(bot.roles if bot else list(caller.roles))


def db_visible(roles: list[Role] | None, labels: dict[str, str]) -> bool:
    """A non-admin sees a database when its roles may list dbs and some role's allow
    labels match it (and no deny labels do) — what `tsh db ls` shows."""
    if roles is None:
        return True
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
    roles = _caller_roles(s, r.caller)
    for db, agents in served.values():
        if not db_visible(roles, dict(db.static_labels)):
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
    cert = s.cas["db"].sign_server(hosts[0], hosts, r.public_key(), ttl)
    s.audit.emit(audit.CERT_CREATE, usage="db_server", hosts=hosts, by=r.who,
                 serial=format(cert.serial_number, "x"),
                 expires=cert.not_valid_after_utc.timestamp())
    return {"cert": cert_pem(cert).decode(), "cas": s.cas["db_client"].cert_pem.decode(),
            "db_ca": s.cas["db"].cert_pem.decode()}


def _status(s: AuthService, r: Request) -> Any:
    return {**_ping(s, r), "bots": len(s.bots.list_bots()), "roles": len(s.storage.list_roles()),
            "databases": len(s.databases), "locks": len(s.locks.active()),
            "agents": len(s.agents.live())}


def _rotate_ca(s: AuthService, r: Request) -> Any:
    return s.rotation.rotate(r.text("type"), manual=bool(r.params.get("manual")),
                             phase=r.text("phase", ""),
                             grace_period=r.duration("grace_period", DEFAULT_GRACE_PERIOD),
                             by=r.who)


def _rotation_status(s: AuthService, r: Request) -> Any:
    return s.rotation.status()


def _audit_verify(s: AuthService, r: Request) -> Any:
    try:
        return s.audit.verify(r.text("expect_head", "") or None).as_dict()
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _users_add(s: AuthService, r: Request) -> Any:
    ttl = _token_ttl(s, r, "ttl")
    secret, expires = s.users.add(r.text("name"), r.strings("roles"), ttl=ttl, by=r.who)
    return {"name": r.text("name"), "invite": secret, "expires": expires,
            "url": f"https://{s.public_addr}/web/invite/{secret}"}


def _users_ls(s: AuthService, r: Request) -> Any:
    return s.users.list()


def _users_rm(s: AuthService, r: Request) -> Any:
    s.users.remove(r.text("name"), by=r.who)
    return {"deleted": r.text("name")}


METHODS: dict[str, tuple[str, Callable[[AuthService, Request], Any]]] = {
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
    "audit_verify": ("admin", _audit_verify),
    "db_ls": ("identity", _db_ls),
    "sign_db_server": ("admin", _sign_db_server),
    "rotate_ca": ("admin", _rotate_ca),
    "rotation_status": ("admin", _rotation_status),
    "users_add": ("admin", _users_add),
    "users_ls": ("admin", _users_ls),
    "users_rm": ("admin", _users_rm),
    **AGENT_METHODS,
}
