"""The check every database connection passes before an engine dials anything.

Order: an identity at all → a database route in it → the protocol and service it routes
to are served here → not expired → the startup's user and database are the ones the
certificate was issued for → locks and roles (deny first) via the auth service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Container
from dataclasses import dataclass

from mwiproxy.auth.errors import AuthError, DeniedByLock, StaleGeneration
from mwiproxy.auth.rbac import QueryAuditPolicy, query_audit_policy
from mwiproxy.auth.roles import Role
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.base import StorageUnavailable
from mwiproxy.identity import names
from mwiproxy.identity.certs import DatabaseRoute, Identity

NO_IDENTITY = ("no client certificate was presented: use the local proxy in tunnel mode "
               "(--tunnel), or give the client sslcert=DIR/tlscert and sslkey=DIR/key")


class Refusal(Exception):
    """Access refused; `reason` is for the operator (sent to the client and audited),
    `code` the bounded reason of mwiproxy_refusals_total."""

    def __init__(self, reason: str, code: str = "access_denied") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    @property
    def message(self) -> str:
        return f"access to db denied: {self.reason}"


@dataclass(frozen=True)
class Grant:
    route: DatabaseRoute
    roles: tuple[str, ...]
    # cut the session when its certificate expires (roles may opt out, see below)
    disconnect_at_expiry: bool = True
    # what query audit records for it (role options query_audit, query_audit_parameters)
    query_audit: QueryAuditPolicy = QueryAuditPolicy()


def _check_route(caller: Identity, protocols: Container[str], served: Container[str]
                 ) -> DatabaseRoute:
    route = caller.route
    if route is None:
        raise Refusal(f"the certificate of {caller.user!r} is not a database certificate "
                      "(it names no database service)")
    if route.protocol not in protocols:
        raise Refusal(f"the certificate is for a {route.protocol or 'unknown'} database, "
                      "not this protocol")
    if route.service not in served:
        raise Refusal(f"database service {route.service!r} is not served by this cluster",
                      "unknown_service")
    # checked per connection, not trusted from the handshake: a resumed TLS session
    # restores the peer certificate without verifying it again
    invalid = caller.validity_problem(dt.datetime.now(dt.UTC))
    if invalid:
        raise Refusal(invalid, "not_yet_valid" if "not valid before" in invalid
                      else "expired")
    return route


def _check_startup(route: DatabaseRoute, db_user: str, db_name: str) -> None:
    try:  # what the server would read differently (truncated) or logs would show wrongly
        names.database_route(route.service, route.protocol, db_user, db_name)
    except names.InvalidName as e:
        raise Refusal(str(e), "bad_startup") from None
    if route.username and route.username != db_user:
        raise Refusal(f'the certificate is for database user "{route.username}", '
                      f'not "{db_user}"')
    if route.database and route.database != db_name:
        raise Refusal(f'the certificate is for database "{route.database}", not "{db_name}"')


def authorize(auth: AuthService, caller: Identity | None, *, db_user: str, db_name: str,
              protocols: Container[str], served: Container[str]) -> Grant:
    """Raise Refusal unless `caller` may use its routed database as db_user/db_name."""
    asked = check_certificate(caller, db_user=db_user, db_name=db_name, protocols=protocols,
                              served=served)
    assert caller is not None
    return check_policy(auth, caller, asked)


def check_certificate(caller: Identity | None, *, db_user: str, db_name: str,
                      protocols: Container[str], served: Container[str]) -> DatabaseRoute:
    """The part of `authorize` that reads only the certificate and the startup (no
    storage): the database route asked for, or Refusal. Passing it is what an early
    dial of the database waits for."""
    if caller is None:
        raise Refusal(NO_IDENTITY)
    route = _check_route(caller, protocols, served)
    _check_startup(route, db_user, db_name)
    return DatabaseRoute(route.service, route.protocol, db_user, db_name)


def check_policy(auth: AuthService, caller: Identity, asked: DatabaseRoute) -> Grant:
    """The rest of `authorize`: locks, bot lineage and generation, roles (storage)."""
    try:
        names, roles = auth.check_database(caller, asked)
    except StorageUnavailable as e:  # PostgreSQL storage out of reach: say so, refuse
        raise Refusal(f"the cluster cannot check access now: {e}", "other") from None
    except AuthError as e:
        code = "locked" if isinstance(e, DeniedByLock) else \
            "stale_generation" if isinstance(e, StaleGeneration) else "access_denied"
        raise Refusal(e.message, code) from None
    return Grant(asked, tuple(names), disconnect_at_expiry(roles), query_audit_policy(roles))


async def check_policy_off_loop(auth: AuthService, caller: Identity,
                               asked: DatabaseRoute) -> Grant:
    """check_policy at session start: from a worker thread when the storage is a network
    round trip away (PostgreSQL), so the loop relays other sessions meanwhile; inline on
    SQLite, where the reads take microseconds, less than the hop to a thread."""
    if auth.storage.remote:
        return await asyncio.to_thread(check_policy, auth, caller, asked)
    return check_policy(auth, caller, asked)


def disconnect_at_expiry(roles: list[Role]) -> bool:
    """Sessions end when their certificate expires unless a role opts out with
    `options.disconnect_expired_cert: false` and no role of the session asks for it."""
    settings = [r.options.disconnect_expired_cert for r in roles]
    return True in settings or False not in settings
