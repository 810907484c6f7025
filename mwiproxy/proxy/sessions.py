"""Live database sessions of the cluster proxy: who, where, and how to cut them.

The registry is what a lock consults to end an identity's sessions, what closes a
session when its certificate expires, and the cancel-key table: a PostgreSQL
CancelRequest is forwarded only to the database of the session that key belongs to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from mwiproxy.auth.locks import describe
from mwiproxy.auth.storage.base import LockRecord
from mwiproxy.identity.certs import Identity
from mwiproxy.wire.postgres import CancelKey

log = logging.getLogger("mwiproxy.proxy.sessions")

REASON_LOCKED = "locked"
REASON_EXPIRED = "certificate_expired"
_ids = itertools.count(1)


@dataclass(eq=False)
class Session:
    identity: Identity
    service: str
    db_user: str
    db_name: str
    remote: str
    roles: tuple[str, ...] = ()
    cut: Callable[[str, str], None] = lambda reason, message: None
    cancel_key: CancelKey | None = None
    session_id: int = field(default_factory=lambda: next(_ids))  # this process's, for logs
    # the audit's session id (every db.session.* event's `session`): unique across
    # restarts and cluster processes, so `mwictl sessions show ID` finds one session
    audit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    end_reason: str = ""
    disconnect_at_expiry: bool = True
    mode: str = "tunnel"  # or "non_tunnel": the client's own TLS ended here
    accepted_at: float = 0.0  # time.monotonic() at accept (the acceptor's)
    first_byte: float = 0.0  # s from accept to the database's answer sent to the client
    # (client → database, database → client) so far: the relay's counters once it runs
    bytes_moved: Callable[[], tuple[int, int]] = lambda: (0, 0)
    _expiry: asyncio.TimerHandle | None = None

    def end(self, reason: str, message: str = "") -> None:
        """Cut the session; `message` tells the client why."""
        if not self.end_reason:
            self.end_reason = reason
        self.cut(reason, message or f"session ended: {reason}")


def lock_applies(lock: LockRecord, session: Session) -> bool:
    ident = session.identity
    if lock.target_kind == "bot":
        return bool(ident.bot_name) and ident.bot_name == lock.target
    if lock.target_kind == "user":
        return ident.user == lock.target
    if lock.target_kind == "role":
        return lock.target in session.roles or lock.target in ident.roles
    return False


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: dict[int, Session] = {}
        self._by_cancel_key: dict[CancelKey, Session] = {}
        self._emptied: asyncio.Event | None = None  # made by wait_empty, set by remove

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._arm_expiry(session)

    def set_cancel_key(self, session: Session, key: CancelKey) -> None:
        session.cancel_key = key
        self._by_cancel_key[key] = session

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)
        if session.cancel_key is not None:
            self._by_cancel_key.pop(session.cancel_key, None)
        if session._expiry is not None:
            session._expiry.cancel()
        if not self._sessions and self._emptied is not None:
            self._emptied.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait (a drain) until no session is left, at most `timeout` s; True if none is."""
        if not self._sessions:
            return True
        self._emptied = asyncio.Event()
        try:
            await asyncio.wait_for(self._emptied.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._emptied = None
        return not self._sessions

    def snapshot(self) -> list[Session]:
        """The live sessions, oldest first (the web UI's Sessions page)."""
        return sorted(self._sessions.values(), key=lambda s: s.started)

    def by_cancel_key(self, key: CancelKey) -> Session | None:
        return self._by_cancel_key.get(key)

    def on_lock(self, lock: LockRecord) -> None:
        """A new lock: end every live session it applies to (lock listener)."""
        for session in list(self._sessions.values()):
            if lock_applies(lock, session):
                log.info("session %d of %s ended: %s %r is locked", session.session_id,
                         session.identity.user, lock.target_kind, lock.target)
                session.end(REASON_LOCKED, f"session ended: {describe(lock)}")

    def close_all(self, reason: str, message: str = "") -> None:
        for session in list(self._sessions.values()):
            session.end(reason, message)

    def _arm_expiry(self, session: Session) -> None:
        expires = session.identity.expires
        if expires is None or not session.disconnect_at_expiry:
            return
        delay = (expires - dt.datetime.now(dt.UTC)).total_seconds()
        loop = asyncio.get_running_loop()
        session._expiry = loop.call_later(max(0.0, delay), session.end, REASON_EXPIRED,
                                          "session ended: the client certificate expired")
