"""SQLite storage: one file under the data dir, WAL mode, one connection per process.

The statements are sqlstore.py's; this file opens the file, creates the schema and runs
them under one lock."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from mwiproxy.auth.storage.sqlite_audit import AUDIT_SCHEMA, SQLiteAudit, take_missing_guards
from mwiproxy.auth.storage.sqlstore import Dialect, Row, SQLStorage, Statement

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bots (
    name TEXT PRIMARY KEY, roles TEXT NOT NULL, generation INTEGER NOT NULL,
    traits TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, kind TEXT NOT NULL, bot_name TEXT NOT NULL,
    expires REAL NOT NULL, created REAL NOT NULL, used_at REAL);
CREATE TABLE IF NOT EXISTS locks (
    lock_id TEXT PRIMARY KEY, target_kind TEXT NOT NULL, target TEXT NOT NULL,
    message TEXT NOT NULL, expires REAL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, addr TEXT NOT NULL,
    databases TEXT NOT NULL, expires REAL NOT NULL, last_heartbeat REAL NOT NULL,
    cert_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (key TEXT PRIMARY KEY, body TEXT NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (key TEXT PRIMARY KEY, user_name TEXT NOT NULL,
    body TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tickets_user ON tickets (user_name);
""" + AUDIT_SCHEMA


class SQLiteStorage(SQLStorage):
    # by the index (sqlite_audit.py): with ORDER BY id DESC LIMIT and no statistics, the
    # planner would rather walk the whole log backwards
    dialect = Dialect("?", audit_session_hint=" INDEXED BY audit_session")

    def __init__(self, path: str) -> None:
        new = not os.path.exists(path)
        if new:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        if new:  # before the first table: the audit log's rows (a batch of commands is
            # tens of KiB) take fewer WAL frames, a sixth less writer CPU (RESULTS.md s12)
            self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        guards_missing = take_missing_guards(self._db)  # before SCHEMA re-creates them
        self._db.executescript(SCHEMA)
        self._migrate_bots()
        self._audit = SQLiteAudit(path, guards_missing)

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _x_rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._q(sql, args)  # nothing is retried here

    def _x_each(self, statements: Sequence[Statement]) -> list[int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(sql, args).rowcount for sql, args in statements]
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return counts

    def _migrate_bots(self) -> None:
        """Data dirs from before lineage tracking: add the columns (empty until the
        bot's next join or renewal)."""
        have = {r[1] for r in self._q("PRAGMA table_info(bots)")}
        for column in ("instance_id", "issued"):
            if column not in have:
                default = "''" if column == "instance_id" else "'{}'"
                self._x(f"ALTER TABLE bots ADD COLUMN {column} TEXT NOT NULL "
                        f"DEFAULT {default}")

    def close(self) -> None:
        with self._lock:
            self._audit.close()
            self._db.close()
