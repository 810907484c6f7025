"""Human users of the web UI: invites, password + TOTP, and browser sessions.

A user is created by the admin (`mwictl users add NAME --roles=...`) with a one-time,
short-lived invite; the invite page sets a password (scrypt, memory-hard) and a TOTP
second factor (verified once before activation). Secrets the browser holds (the invite,
the session id) are stored only as their SHA-256 (`tickets` table): a copy of the
storage lets nobody in. What a user may do comes from the `rules` of their roles
(web/ checks them with rbac.check_rule); locks on the user or a role apply at every
request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from mwiproxy.auth import totp
from mwiproxy.auth.audit import AuditLog
from mwiproxy.auth.errors import AlreadyExists, BadRequest, NotFound, checked
from mwiproxy.auth.storage.base import Storage
from mwiproxy.identity import names

# audit event types
USER_CREATE = "user.create"
USER_ACTIVATE = "user.activate"
USER_DELETE = "user.delete"
LOGIN = "web.login"
LOGIN_FAILED = "web.login.failed"
LOGIN_LIMITED = "web.login.limited"
LOGOUT = "web.logout"

INVITE_TTL = 3600.0
SESSION_IDLE = 30 * 60.0
SESSION_ABSOLUTE = 12 * 3600.0
SEEN_EVERY = 60.0  # a session's last_seen is written at most this often
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
# scrypt: 2^15 x 8 x 128 B = 32 MiB per hash (memory-hard), ~0.1 s on one core
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
# failed logins: at most this many per window, per user name and per remote address
WINDOW = 300.0
FAILURES_PER_USER = 5
FAILURES_PER_REMOTE = 20


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = Scrypt(salt, 32, SCRYPT_N, SCRYPT_R, SCRYPT_P).derive(password.encode())
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def check_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        Scrypt(base64.b64decode(salt), 32, int(n), int(r), int(p)).verify(
            password.encode(), base64.b64decode(key))
        return True
    except (ValueError, InvalidKey):
        return False


# a hash to check against when the user does not exist: the same time either way
_DUMMY = hash_password(secrets.token_urlsafe(16))


def ticket_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class FailureWindow:
    """Failures per key in the last `window` seconds, at most `limit` allowed."""

    def __init__(self, limit: int, window: float = WINDOW, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str, now: float) -> bool:
        with self._lock:
            q = self._seen.get(key)
            while q and q[0] <= now - self.window:
                q.popleft()
            return q is not None and len(q) >= self.limit

    def failed(self, key: str, now: float) -> None:
        with self._lock:
            if len(self._seen) >= self.max_keys:  # bounded: forget the quiet ones
                self._seen = {k: q for k, q in self._seen.items()
                              if q and q[-1] > now - self.window}
            self._seen.setdefault(key, deque(maxlen=self.limit)).append(now)


@dataclass(frozen=True)
class WebSession:
    user: str
    roles: list[str]
    csrf: str
    expires: float


class LoginRefused(Exception):
    """Wrong password or code, or too many attempts (the message says which to show)."""


class UserService:
    def __init__(self, storage: Storage, audit: AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage, self.audit, self.clock = storage, audit, clock
        self.by_user = FailureWindow(FAILURES_PER_USER)
        self.by_remote = FailureWindow(FAILURES_PER_REMOTE)

    # the admin's side (auth API: users_add / users_ls / users_rm)
    def add(self, name: str, roles: list[str], *, ttl: float = INVITE_TTL, by: str = ""
            ) -> tuple[str, float]:
        checked(names.user_name, name)
        for r in roles:
            checked(names.role_name, r)
        if name.startswith("bot-"):
            raise BadRequest("user names starting with 'bot-' belong to bots")
        now = self.clock()
        if not self.storage.put_user(name, {"roles": roles, "state": "invited",
                                            "created": now}, overwrite=False):
            raise AlreadyExists(f"user {name!r} already exists")
        secret = secrets.token_urlsafe(32)
        expires = now + ttl
        self.storage.put_ticket(ticket_key(secret), name,
                                {"kind": "invite", "totp": totp.new_secret()}, expires)
        self.audit.emit(USER_CREATE, user=name, roles=roles, by=by, expires=expires)
        return secret, expires

    def list(self) -> list[dict[str, Any]]:
        return [{"name": n, "roles": b.get("roles", []), "state": b.get("state", ""),
                 "created": b.get("created", 0.0)} for n, b in self.storage.list_users()]

    def remove(self, name: str, *, by: str = "") -> None:
        if not self.storage.delete_user(name):
            raise NotFound(f"user {name!r} not found")
        self.audit.emit(USER_DELETE, user=name, by=by)

    # the invite
    def invite(self, secret: str) -> tuple[str, str] | None:
        """(user, TOTP secret) of a live invite, else None."""
        got = self.storage.get_ticket(ticket_key(secret))
        if got is None or got[1].get("kind") != "invite" or got[2] <= self.clock():
            return None
        return got[0], str(got[1]["totp"])

    def accept(self, secret: str, password: str, code: str, remote: str = "") -> str:
        """Set the password and second factor; the invite is used up. BadRequest says
        what to fix (the invite stays good then)."""
        found = self.invite(secret)
        if found is None:
            raise BadRequest("this invite is not valid (used, expired or unknown)")
        user, seed = found
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise BadRequest(f"the password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        now = self.clock()
        step = totp.verify(seed, code, now)
        if step is None:
            raise BadRequest("the code does not match: check the authenticator's clock "
                             "and enter the current code")
        if self.storage.take_ticket(ticket_key(secret)) is None:  # single use: one wins
            raise BadRequest("this invite is not valid (used, expired or unknown)")
        body = self.storage.get_user(user)
        if body is None:
            raise BadRequest("this invite is not valid (the user was removed)")
        body.update(state="active", password=hash_password(password), totp=seed,
                    totp_step=step)
        self.storage.put_user(user, body, overwrite=True)
        self.audit.emit(USER_ACTIVATE, user=user, remote=remote)
        return user

    # logging in
    def login(self, name: str, password: str, code: str, remote: str) -> tuple[str, WebSession]:
        """A new session (its secret for the cookie) or LoginRefused."""
        now = self.clock()
        if self.by_user.blocked(name, now) or self.by_remote.blocked(remote, now):
            self.audit.emit(LOGIN_LIMITED, user=name, remote=remote)
            raise LoginRefused("too many failed attempts: wait a few minutes")
        body = self.storage.get_user(name) if len(name) <= 255 else None
        active = body is not None and body.get("state") == "active"
        ok = check_password(str(body["password"]) if active and body else _DUMMY, password)
        step = None
        if ok and active and body:
            step = totp.verify(str(body["totp"]), code, now,
                               not_before=int(body.get("totp_step", -1)))
        if body is None or not active or not ok or step is None:
            self.by_user.failed(name, now)
            self.by_remote.failed(remote, now)
            why = ("unknown or inactive user" if not active else
                   "wrong password" if not ok else "wrong or reused code")
            self.audit.emit(LOGIN_FAILED, user=name, remote=remote, reason=why)
            raise LoginRefused("wrong user name, password or code")
        body["totp_step"] = step  # a code is good once
        self.storage.put_user(name, body, overwrite=True)
        self.storage.delete_tickets("", expired_at=now)  # everyone's ended sessions
        secret = secrets.token_urlsafe(32)  # 256 bits
        csrf = secrets.token_urlsafe(32)
        expires = now + SESSION_ABSOLUTE
        self.storage.put_ticket(ticket_key(secret), name,
                                {"kind": "session", "csrf": csrf, "seen": now,
                                 "remote": remote}, expires)
        self.audit.emit(LOGIN, user=name, remote=remote)
        return secret, WebSession(name, list(body.get("roles", [])), csrf, expires)

    def session(self, secret: str) -> WebSession | None:
        """The live session of that cookie (idle and absolute expiry), else None."""
        if not secret or len(secret) > 128:
            return None
        key = ticket_key(secret)
        got = self.storage.get_ticket(key)
        if got is None or got[1].get("kind") != "session":
            return None
        user, body, expires = got
        now = self.clock()
        if expires <= now or float(body.get("seen", 0)) + SESSION_IDLE <= now:
            self.storage.take_ticket(key)
            return None
        record = self.storage.get_user(user)
        if record is None or record.get("state") != "active":
            return None
        if now - float(body.get("seen", 0)) >= SEEN_EVERY:
            body["seen"] = now
            self.storage.put_ticket(key, user, body, expires)
        return WebSession(user, list(record.get("roles", [])), str(body["csrf"]), expires)

    def logout(self, secret: str, user: str, remote: str) -> None:
        self.storage.take_ticket(ticket_key(secret))
        self.audit.emit(LOGOUT, user=user, remote=remote)

    def check_csrf(self, session: WebSession, token: str) -> bool:
        return hmac.compare_digest(session.csrf.encode(), token.encode())
