"""The auth service: the state and checks behind the `mwi-auth` ALPN protocol.

`call` looks the method up in `handlers.METHODS`, checks the caller against who may
call it and against what may have changed since its handshake (validity window, locks,
bot generation), then runs the handler (`handlers.py`, `agent_handlers.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any, NoReturn

from mwiproxy.auth import audit
from mwiproxy.auth.agents import AgentService
from mwiproxy.auth.bots import BotService, stale_bot_identity
from mwiproxy.auth.ca_rotation import RotationService
from mwiproxy.auth.errors import (
    AccessDenied,
    BadRequest,
    DeniedByLock,
    Locked,
    NotFound,
    StaleGeneration,
)
from mwiproxy.auth.handlers import METHODS
from mwiproxy.auth.locks import LockService, describe
from mwiproxy.auth.rbac import check_database_access
from mwiproxy.auth.request import Caller, Request
from mwiproxy.auth.roles import Role
from mwiproxy.auth.storage.base import Storage
from mwiproxy.auth.users import UserService
from mwiproxy.config.cluster import AuthConfig, DatabaseConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import AuthoritySet
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.metrics.auth import NoopAuthMetrics

__all__ = ["AuthService", "Caller", "Request"]

MAX_PARSED_ROLES = 1024
# the methods that are joins (role label) and bot renewals, for the metrics
_JOINS = {"join": "bot", "agent_join": "db"}
_RENEWALS = frozenset({"renew"})


class AuthService:
    def __init__(
        self, *, cluster: str, storage: Storage, cas: AuthoritySet,
        databases: list[DatabaseConfig], public_addr: str = "",
        clock: Callable[[], float] = time.time, limits: AuthConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.limits = limits or AuthConfig()
        self.storage = storage
        self.cas = cas
        self.databases = {d.name: d for d in databases}
        self.public_addr = public_addr
        self.clock = clock
        self.audit = audit.AuditLog(storage, clock)
        self._parsed_roles: dict[str, Role] = {}
        self.locks = LockService(storage, self.audit, clock)
        self.bots = BotService(storage, cas, self.locks, self.audit, cluster, clock,
                               max_ttl=lambda: self.limits.max_certificate_ttl)
        self.agents = AgentService(storage, cas, self.locks, self.audit, cluster, clock,
                                   static_databases=lambda: self.databases.keys())
        self.rotation = RotationService(cas, self.audit, clock)
        self.users = UserService(storage, self.audit, clock)
        self.metrics = NoopAuthMetrics()  # the cluster injects live ones (use_metrics)

    def use_metrics(self, metrics: NoopAuthMetrics) -> None:
        """Record into `metrics`: API calls here, certificates where the CAs sign them,
        batches where the audit writer stores them."""
        self.metrics = metrics
        self.cas.observer = metrics.issued
        self.audit.writer.observe_batch = metrics.audit_batch

    # dispatch
    def call(self, method: str, caller: Caller, params: dict[str, Any], remote: str = "") -> Any:
        entry = METHODS.get(method)
        if entry is None:
            self.metrics.request("other", "error")
            raise BadRequest(f"unknown method {method!r}")
        who, handler = entry
        req = Request(caller, params, remote)
        try:
            self._authorize(method, who, req)
            result = handler(self, req)
        except BaseException as e:
            self._count(method, "denied" if isinstance(e, AccessDenied) else "error")
            raise
        self._count(method, "success")
        return result

    def _count(self, method: str, result: str) -> None:
        self.metrics.request(method, result)
        if method in _JOINS:
            self.metrics.join(_JOINS[method], result == "success")
        elif method in _RENEWALS:
            self.metrics.renewal(result == "success")

    def _authorize(self, method: str, who: str, req: Request) -> None:
        c = req.caller
        if who == "anyone":
            return
        if c is not None:
            self._check_still_valid(method, req, c)
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

    def _check_still_valid(self, method: str, req: Request, c: Identity) -> None:
        """What the handshake proved may no longer hold at the time of the call: the
        certificate may have expired since (a long-lived connection, a resumed session),
        a lock may have been created, the bot may have renewed or re-joined since."""
        why = c.validity_problem(dt.datetime.now(dt.UTC))
        if not why and c.cluster and c.cluster != self.cluster:
            why = f"the certificate belongs to cluster {c.cluster!r}, not {self.cluster!r}"
        if why:
            self._deny(method, req, why)
        bot = self.storage.get_bot(c.bot_name) if c.is_bot else None
        lock = self.locks.find(bot=c.bot_name, user=c.user, roles=bot.roles if bot else c.roles)
        if lock is not None:
            self._deny(method, req, f"{method} refused: {describe(lock)}", Locked)
        if c.is_bot and method != "renew":  # renew judges generations itself (bots.py)
            why = stale_bot_identity(c, bot, exact=True)
            if why:
                self._deny(method, req, why)

    def _deny(self, method: str, req: Request, why: str,
              error: type[AccessDenied] = AccessDenied) -> NoReturn:
        self.audit.emit(audit.AUTH_DENIED, method=method, user=req.who, reason=why,
                        remote=req.remote)
        raise error(why if error is Locked else f"{method}: {why}")

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
        """Every trusted certificate of each CA peers verify with (two during a rotation)."""
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
        return self.check_database(caller, route)[0]

    def check_database(self, caller: Identity, route: DatabaseRoute
                       ) -> tuple[list[str], list[Role]]:
        """authorize_database, also returning the stored roles it parsed (the proxy reads
        their session options without reading and parsing them again)."""
        bot = self.storage.get_bot(caller.bot_name) if caller.bot_name else None
        role_names = bot.roles if bot else list(caller.roles)
        lock = self.locks.find(bot=caller.bot_name, user=caller.user, roles=role_names)
        if lock is not None:
            raise DeniedByLock(describe(lock))
        stale = stale_bot_identity(caller, bot, exact=False) if caller.bot_name else ""
        if stale:
            raise StaleGeneration(stale)
        db = self.database(route.service)
        roles = self.roles_for(role_names)
        decision = check_database_access(
            roles, db_labels=dict(db.static_labels),
            db_name=route.database, db_user=route.username,
            traits=bot.traits if bot else caller.traits, db_service=route.service,
        )
        if not decision.allowed:
            raise AccessDenied(decision.reason)
        return role_names, roles
