"""Locks: a locked bot, role or user gets no certificate, and its live sessions end.

Listeners hear each lock once: the ones made here when they are made, the ones another
cluster process made on a shared storage when `refresh` finds them (auth/lock_feed.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable

from mwiproxy.auth import audit
from mwiproxy.auth.errors import BadRequest, checked
from mwiproxy.auth.storage.base import LockRecord, Storage
from mwiproxy.identity import names

LOCK_TARGETS = ("bot", "role", "user")
LockListener = Callable[[LockRecord], None]


class LockService:
    def __init__(
        self, storage: Storage, audit_log: audit.AuditLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._audit = audit_log
        self._clock = clock
        self._listeners: list[LockListener] = []
        self._heard: dict[str, float] = {}  # lock id -> when listeners were told
        self._heard_lock = threading.Lock()

    def on_lock(self, listener: LockListener) -> None:
        """Called for every new lock (the cluster proxy uses it to cut live sessions)."""
        self._listeners.append(listener)

    def create(
        self, target_kind: str, target: str, *, message: str = "",
        ttl: float | None = None, by: str = "",
    ) -> LockRecord:
        if target_kind not in LOCK_TARGETS:
            raise BadRequest(f"lock target must be one of {', '.join(LOCK_TARGETS)}")
        # a lock on `example\n` would not stop `example` (nor be told apart from it)
        checked(names.lock_target, target_kind, target)
        now = self._clock()
        lock = LockRecord(
            lock_id=str(uuid.uuid4()), target_kind=target_kind, target=target,
            message=message, expires=now + ttl if ttl else None, created=now,
        )
        self._first_hearing(lock.lock_id)  # before it is stored: refresh may see it next
        self._storage.create_lock(lock)
        self._audit.emit(audit.LOCK_CREATE, lock_id=lock.lock_id, target_kind=target_kind,
                         target=target, message=message, expires=lock.expires, by=by)
        self._tell(lock)
        return lock

    def refresh(self) -> list[LockRecord]:
        """Tell the listeners about active locks they have not heard of (made by another
        cluster process on the same storage); returns those."""
        active = self.active()
        new = [lock for lock in active if self._first_hearing(lock.lock_id)]
        with self._heard_lock:  # forget locks gone for a minute (never re-told: see above)
            live = {lock.lock_id for lock in active}
            old = self._clock() - 60
            for lock_id in [k for k, t in self._heard.items() if k not in live and t < old]:
                del self._heard[lock_id]
        for lock in new:
            self._tell(lock)
        return new

    def _first_hearing(self, lock_id: str) -> bool:
        with self._heard_lock:
            if lock_id in self._heard:
                return False
            self._heard[lock_id] = self._clock()
            return True

    def _tell(self, lock: LockRecord) -> None:
        for listener in self._listeners:
            listener(lock)

    def remove(self, lock_id: str, *, by: str = "") -> bool:
        removed = self._storage.delete_lock(lock_id)
        if removed:
            self._audit.emit(audit.LOCK_DELETE, lock_id=lock_id, by=by)
        return removed

    def active(self) -> list[LockRecord]:
        return self._storage.list_locks(now=self._clock())

    def find(
        self, *, bot: str = "", user: str = "", roles: Iterable[str] = ()
    ) -> LockRecord | None:
        """The first active lock that applies to this bot, user or any of these roles."""
        wanted = {("bot", bot), ("user", user)} | {("role", r) for r in roles}
        for lock in self.active():
            if (lock.target_kind, lock.target) in wanted and lock.target:
                return lock
        return None


def describe(lock: LockRecord) -> str:
    why = f": {lock.message}" if lock.message else ""
    return f"{lock.target_kind} {lock.target!r} is locked{why} (lock {lock.lock_id})"
