"""Locks made by other cluster processes on a shared storage reach this one's sessions.

A thread waits on the storage's lock notices (PostgreSQL LISTEN/NOTIFY, storage/pg_locks.py)
and, on a notice, re-reads the locks: LockService.refresh tells the listeners (the proxy's
session registry) about the new ones. Without notices (the listening connection is down)
the notices source wakes it every POLL seconds to poll the table instead. With SQLite
storage there is no other process and no feed.
"""

from __future__ import annotations

import logging
import threading

from mwiproxy.auth.locks import LockService
from mwiproxy.auth.storage.base import LockNoticeSource, Storage, StorageUnavailable

POLL = 1.0  # s between polls of the locks table while notices are not heard
log = logging.getLogger("mwiproxy.auth.lock_feed")


class LockFeed:
    def __init__(self, locks: LockService, notices: LockNoticeSource) -> None:
        self._locks = locks
        self._notices = notices
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-feed", daemon=True)

    @classmethod
    def start_for(cls, locks: LockService, storage: Storage) -> LockFeed | None:
        notices = storage.lock_notices()
        if notices is None:
            return None
        feed = cls(locks, notices)
        locks.refresh()  # the locks that exist now are not news
        feed._thread.start()
        return feed

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._notices.wait(POLL) and not self._stop.is_set():
                    self._refresh()
        finally:
            self._notices.finish()

    def _refresh(self) -> None:
        try:
            for lock in self._locks.refresh():
                log.info("lock %s on %s %r made by another cluster process",
                         lock.lock_id, lock.target_kind, lock.target)
        except StorageUnavailable as e:
            log.warning("lock feed: cannot read the locks: %s", e)
        except Exception:  # the feed must outlive any one bad read
            log.exception("lock feed: reading the locks failed")

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._notices.close()
        self._thread.join(timeout)
