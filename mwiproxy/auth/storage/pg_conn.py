"""One PostgreSQL connection of the storage, re-opened after it is lost.

A call runs under the connection's lock (the auth API's worker threads and the proxy
share one storage). When the connection turns out to be broken, the next call opens a
new one. A read that failed that way is retried once on the new connection; a write is
not (it may have been applied before the connection broke): it raises StorageUnavailable
saying so, and the caller's operation fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from mwiproxy.auth.storage.base import StorageUnavailable, StoreClosed

__all__ = ["Connection", "StorageUnavailable", "open_connection", "redact"]

T = TypeVar("T")
CONNECT_TIMEOUT = 10  # seconds, for each (re)connection


def redact(conn_string: str) -> str:
    """The connection string without a password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conn_string)
    except psycopg.ProgrammingError:
        return "(unparsable connection string)"
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "password")


def one_line(e: Exception) -> str:
    """libpq's message (it spreads hints over several lines) on one line."""
    return "; ".join(part.strip() for part in str(e).splitlines() if part.strip())


def open_connection(conn_string: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(conn_string, autocommit=True,
                               connect_timeout=CONNECT_TIMEOUT,
                               application_name="mwiproxy")
    except psycopg.OperationalError as e:
        raise StorageUnavailable(
            f"cannot connect to the PostgreSQL storage ({redact(conn_string)}): "
            f"{one_line(e)}") from None


class Connection:
    def __init__(self, conn_string: str, what: str) -> None:
        self._conn_string = conn_string
        self._what = what  # "storage" | "audit": says which connection in errors
        self.lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = open_connection(conn_string)
        self.closed = False

    def get(self) -> psycopg.Connection[Any]:
        """The live connection (caller holds the lock), opening one if needed."""
        if self.closed:
            raise StoreClosed(f"the PostgreSQL {self._what} connection is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = open_connection(self._conn_string)
        return self._conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, read: bool) -> T:
        with self.lock:
            for attempt in (1, 2):
                conn = self.get()
                try:
                    return fn(conn)
                except psycopg.OperationalError as e:
                    if not (conn.closed or conn.broken):
                        raise  # a server-side error on a live connection
                    self._drop()
                    if read and attempt == 1:
                        continue
                    done = "" if read else " (the write may or may not have been applied)"
                    raise StorageUnavailable(
                        f"the connection to the PostgreSQL storage was lost{done}: "
                        f"{one_line(e)}") from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._drop()
