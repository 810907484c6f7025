"""The check every database connection passes before an engine dials anything.

Order: an identity at all → a database route in it → the protocol and service it routes
to are served here → not expired → the startup's user and database are the ones the
certificate was issued for → locks and roles (deny first) via the auth service.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container
from dataclasses import dataclass

from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.roles import Role
from mwiproxy.auth.service import AuthService
from mwiproxy.identity.certs import DatabaseRoute, Identity

NO_IDENTITY = ("no client certificate was presented: use the local proxy in tunnel mode "
               "(--tunnel), or give the client sslcert=DIR/tlscert and sslkey=DIR/key")


class Refusal(Exception):
    """Access refused; `reason` is for the operator (sent to the client and audited)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def message(self) -> str:
        return f"access to db denied: {self.reason}"


@dataclass(frozen=True)
class Grant:
    route: DatabaseRoute
    roles: tuple[str, ...]
    # cut the session when its certificate expires (roles may opt out, see below)
    disconnect_at_expiry: bool = True


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
        raise Refusal(f"database service {route.service!r} is not served by this cluster")
    if caller.expires is not None and caller.expires <= dt.datetime.now(dt.UTC):
        raise Refusal(f"the certificate expired at {caller.expires:%Y-%m-%d %H:%M:%S} UTC")
    return route


def _check_startup(route: DatabaseRoute, db_user: str, db_name: str) -> None:
    if route.username and route.username != db_user:
        raise Refusal(f'the certificate is for database user "{route.username}", '
                      f'not "{db_user}"')
    if route.database and route.database != db_name:
        raise Refusal(f'the certificate is for database "{route.database}", not "{db_name}"')


def authorize(auth: AuthService, caller: Identity | None, *, db_user: str, db_name: str,
              protocols: Container[str], served: Container[str]) -> Grant:
    """Raise Refusal unless `caller` may use its routed database as db_user/db_name."""
    if caller is None:
        raise Refusal(NO_IDENTITY)
    route = _check_route(caller, protocols, served)
    _check_startup(route, db_user, db_name)
    asked = DatabaseRoute(route.service, route.protocol, db_user, db_name)
    try:
        roles = auth.authorize_database(caller, asked)
    except AuthError as e:
        raise Refusal(e.message) from None
    return Grant(asked, tuple(roles), disconnect_at_expiry(auth.roles_for(list(roles))))


def disconnect_at_expiry(roles: list[Role]) -> bool:
    """Sessions end when their certificate expires unless a role opts out with
    `options.disconnect_expired_cert: false` and no role of the session asks for it."""
    settings = [r.options.disconnect_expired_cert for r in roles]
    return True in settings or False not in settings
