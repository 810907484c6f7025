"""Session grants: what lets a database agent have one database-client certificate.

An agent signs in to its database with a certificate from the cluster's db_client CA
(`agent_sign_db_client`). If any agent identity could ask for any database user, a rogue
agent — or whoever holds a stolen db join token — could have a certificate for
`postgres` and log in as superuser without going through the proxy. So the cluster
proxy, once it has authorized a session (RBAC, locks, expiry) that an agent will serve,
takes a grant here and sends its secret to that agent in the link hello. The agent
presents the secret with its request, and the cluster signs only for that session's
database user on that session's database, for the agent it was sent to, once, within
seconds.

Grants live in the auth process's memory when it is the only process on its storage
(SQLite): the proxy runs in the same process, and a grant outlives its session's start by
seconds, so a restart loses nothing that matters. With a shared storage (PostgreSQL) the
agent may ask another cluster process than the one whose proxy took the grant, so grants
are stored there, keyed by the secret's SHA-256 (never the secret), and taken out in one
statement: one request gets it, whichever process it reaches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mwiproxy.auth.storage.base import Storage

GRANT_TTL = 30.0  # seconds: the agent uses it while the session is starting
# Most grants are never used (the agent still holds a certificate for that user), so at
# a high session rate many wait out their TTL; past this many the oldest go first.
MAX_GRANTS = 10_000


class GrantRefused(Exception):
    """The grant does not allow this request; the message says why."""


@dataclass(frozen=True)
class Grant:
    session_id: int
    host_id: str  # the agent the proxy sent it to
    service: str
    db_name: str
    db_user: str
    user: str  # the client the session belongs to, for the audit
    expires: float


class GrantStore:
    def __init__(self, clock: Callable[[], float], *, ttl: float = GRANT_TTL,
                 limit: int = MAX_GRANTS, shared: Storage | None = None) -> None:
        """`shared`: the storage the grants go to instead of memory (see above)."""
        self._shared = shared
        self._pruned = 0.0  # when the shared grants were last pruned
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._grants: dict[str, Grant] = {}  # secret → grant, oldest first
        self._mu = threading.Lock()

    def __len__(self) -> int:
        return len(self._grants)

    def issue(self, *, session_id: int, host_id: str, service: str, db_name: str,
              db_user: str, user: str) -> str:
        """A new grant's secret."""
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        grant = Grant(session_id, host_id, service, db_name, db_user, user, now + self._ttl)
        if self._shared is not None:
            if now - self._pruned >= self._ttl:  # the expired ones, now and then
                self._pruned = now
                self._shared.prune_grants(now)
            self._shared.put_grant(_key(secret), json.dumps(dataclasses.asdict(grant)),
                                   grant.expires)
            return secret
        with self._mu:
            self._prune(now)
            while len(self._grants) >= self._limit:
                del self._grants[next(iter(self._grants))]
            self._grants[secret] = grant
        return secret

    def consume(self, secret: str, *, host_id: str, service: str, db_user: str) -> Grant:
        """The grant for this request, used up; GrantRefused says why not."""
        if not secret:
            raise GrantRefused("no grant: certificates are issued to agents only for a "
                               "session the cluster proxy has authorized")
        # taken out before any check: a grant is good for one request, even a refused one
        if self._shared is not None:
            body = self._shared.take_grant(_key(secret))
            grant = Grant(**json.loads(body)) if body is not None else None
        else:
            with self._mu:
                grant = self._grants.pop(secret, None)
        if grant is None:
            raise GrantRefused("unknown or already used grant")
        if grant.expires <= self._clock():
            raise GrantRefused(f"the grant of session {grant.session_id} expired")
        if grant.host_id != host_id:
            raise GrantRefused(f"the grant of session {grant.session_id} was given to "
                               f"agent {grant.host_id}")
        if grant.service != service:
            raise GrantRefused(f"the grant of session {grant.session_id} is for database "
                               f"{grant.service!r}, not {service!r}")
        if grant.db_user != db_user:
            raise GrantRefused(f"the grant of session {grant.session_id} is for database "
                               f"user {grant.db_user!r}, not {db_user!r}")
        return grant

    def _prune(self, now: float) -> None:
        """Drop expired grants from the front (the caller holds the lock). Grants are kept
        in the order issued with one TTL, so the expired ones come first."""
        while self._grants:
            secret = next(iter(self._grants))
            if self._grants[secret].expires > now:
                return
            del self._grants[secret]


def _key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
