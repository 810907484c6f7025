"""Locks: a locked bot, role or user gets no certificate, and its live sessions end."""

from __future__ import annotations

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
        self._storage.create_lock(lock)
        self._audit.emit(audit.LOCK_CREATE, lock_id=lock.lock_id, target_kind=target_kind,
                         target=target, message=message, expires=lock.expires, by=by)
        for listener in self._listeners:
            listener(lock)
        return lock

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
