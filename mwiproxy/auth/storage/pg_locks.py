"""Lock notices between cluster processes sharing one PostgreSQL storage.

Creating a lock sends `NOTIFY mwiproxy_locks` in the same statement as its INSERT
(postgres.py). Each cluster process keeps one dedicated connection LISTENing on that
channel; `wait` returns True as soon as a notice arrives, so the lock feed re-reads the
locks table (auth/lock_feed.py). While the listening connection is down (lost, or the
server refuses it) `wait` returns True every `timeout` seconds: the feed then polls the
table instead, and once more after reconnecting, for the notices missed in between.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from mwiproxy.auth.storage.pg_conn import StorageUnavailable, one_line, open_connection

CHANNEL = "mwiproxy_locks"
log = logging.getLogger("mwiproxy.auth.storage")


class LockNotices:
    def __init__(self, conn_string: str) -> None:
        self._conn_string = conn_string
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = threading.Event()
        self.listening = False  # False while polling instead
        self._said_down = False  # the poll fallback is logged once per outage

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` s; True when the locks table may have changed."""
        if self._closed.is_set():
            return False
        if self._conn is None:
            return self._reconnect(timeout)
        try:
            return any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error as e:
            if self._closed.is_set():
                return False
            log.warning("lock notices: the listening connection was lost (%s); polling the "
                        "locks table every %.0f s until it is back", one_line(e), timeout)
            self._said_down = True
            self._drop()
            return True

    def _reconnect(self, timeout: float) -> bool:
        try:
            conn = open_connection(self._conn_string)
            conn.execute(f"LISTEN {CHANNEL}")  # type: ignore[arg-type]  # a constant
        except (StorageUnavailable, psycopg.Error) as e:
            if not self._said_down:
                log.warning("lock notices unavailable (%s); polling the locks table every "
                            "%.0f s", one_line(e) if isinstance(e, psycopg.Error) else e,
                            timeout)
                self._said_down = True
            self._closed.wait(timeout)
            return True
        self._conn, self.listening, self._said_down = conn, True, False
        return True  # notices sent while we were not listening are lost: re-read once

    def _drop(self) -> None:
        self.listening = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        """From another thread: the next `wait` returns False at once (or within its
        timeout if one is running); the connection is closed by `finish`."""
        self._closed.set()

    def finish(self) -> None:
        """From the waiting thread, after its last `wait`."""
        self._drop()
