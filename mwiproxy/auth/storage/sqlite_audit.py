"""The audit table of SQLiteStorage: hash-chained appends (chain.py), the migration of
logs written before the chain, and snapshot reads for verification.

The `session` column holds an event's `session` field (a database session's audit id)
when it is a string, so `query_audit(session=...)` is an index lookup; it is not part of
the hash (the fields are), and rows from before the column have none (no session then).

Appends come in batches (the audit writer thread's, auth/audit_writer.py): one
transaction per batch, the rows and then the head in `meta`. The head (newest id and
hash) is cached in memory after opening, so an append reads nothing. Appends use a
connection of their own, so a slow or locked write never holds the storage's lock (the
proxy's access checks read through that one).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time as _time
from collections.abc import Iterator, Sequence

from mwiproxy.auth.storage.base import (
    AuditHead,
    AuditTail,
    ChainedAuditEvent,
    Fields,
    StoreClosed,
)
from mwiproxy.auth.storage.chain import (
    CHAIN_MIGRATED,
    GENESIS,
    fields_text,
    link_hash,
    link_rows,
    session_of,
)

log = logging.getLogger("mwiproxy.audit")

HEAD_KEY = "audit_head"  # in `meta`: "HASH@ID"
_GUARDS = {
    "audit_no_update": "BEFORE UPDATE ON audit "
                       "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "audit_no_delete": "BEFORE DELETE ON audit "
                       "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
}
_GUARD_SQL = "".join(f"CREATE TRIGGER IF NOT EXISTS {n} {b};\n" for n, b in _GUARDS.items())
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, type TEXT NOT NULL,
    fields TEXT NOT NULL, prev_hash TEXT, hash TEXT, session TEXT);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
""" + _GUARD_SQL
_INSERT = ("INSERT INTO audit (id, time, type, fields, prev_hash, hash, session) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")
_ROW = "SELECT id, time, type, fields, prev_hash, hash FROM audit"


def take_missing_guards(db: sqlite3.Connection) -> list[str]:
    """Before the schema is applied (which re-creates them): the append-only triggers
    that are gone or were altered. Altered ones are dropped so the schema puts back the
    real ones."""
    rows = dict(db.execute("SELECT name, sql FROM sqlite_master "
                           "WHERE type IN ('table', 'trigger')").fetchall())
    if "audit" not in rows:
        return []  # a new database
    missing = []
    for name, body in _GUARDS.items():
        if name not in rows:
            missing.append(name)
        elif " ".join(rows[name].split()) != f"CREATE TRIGGER {name} {body}":
            missing.append(f"{name} (altered)")
            db.execute(f"DROP TRIGGER {name}")
    return missing


def connect(path: str) -> sqlite3.Connection:
    """A connection as the storage uses them (autocommit, WAL, waits for a busy lock)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class SQLiteAudit:
    def __init__(self, path: str, guards_missing: list[str]) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        self._path = path
        self.guards_missing = guards_missing
        self._closed = False
        self._top = 0  # the highest id handed out
        self._head_hash = GENESIS
        with self._lock:
            self._add_columns()
            self._chain_older_events()
            self._load_head()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def _add_columns(self) -> None:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
        for column in ("prev_hash", "hash", "session"):
            if column not in have:
                self._db.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT")
        # not a partial index (WHERE session IS NOT NULL): SQLite cannot use one for
        # `session = ?` with a bound parameter
        self._db.execute("CREATE INDEX IF NOT EXISTS audit_session ON audit (session)")

    def _tail(self, db: sqlite3.Connection) -> AuditTail:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (HEAD_KEY,)).fetchone()
        head = None
        if row:
            hash_, _, event_id = str(row[0]).partition("@")
            head = AuditHead(int(event_id) if event_id.isdigit() else 0, hash_)
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        return AuditTail(head, int(seq[0]) if seq else 0)

    def _load_head(self) -> None:
        """Link new events onto the recorded head, not onto whatever row is last, so
        deleted or forged events at the end stay visible as a break."""
        tail = self._tail(self._db)
        last = self._db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        self._top = max(tail.head.event_id if tail.head else 0, tail.highest_id,
                        last[0] if last else 0)
        if tail.head is not None:
            self._head_hash = tail.head.hash
        else:
            self._head_hash = (last[1] if last else None) or GENESIS

    def _chain_older_events(self) -> None:
        """A log written before the chain existed (no head, no hashes): chain its events
        from GENESIS now and record that as an event. They are vouched for only from
        this moment on."""
        if self._db.execute("SELECT 1 FROM meta WHERE key = ?", (HEAD_KEY,)).fetchone():
            return
        if self._db.execute("SELECT 1 FROM audit WHERE hash IS NOT NULL LIMIT 1").fetchone():
            return  # hashes without a head: a deleted head, which verification reports
        rows = self._db.execute(_ROW + " ORDER BY id").fetchall()
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DROP TRIGGER IF EXISTS audit_no_update")
            prev = GENESIS
            for event_id, t, type_, text, _, _ in rows:
                h = link_hash(prev, event_id, t, type_, text)
                self._db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                                 (prev, h, event_id))
                prev = h
            name = "audit_no_update"
            self._db.execute(f"CREATE TRIGGER {name} {_GUARDS[name]}")
            self._top, self._head_hash = rows[-1][0], prev
            self._insert(_time.time(), CHAIN_MIGRATED, fields_text(
                {"chained": len(rows), "first_id": rows[0][0], "last_id": rows[-1][0],
                 "genesis": GENESIS, "head": f"{prev}@{rows[-1][0]}"}))
            self._store_head()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.warning("audit log: %d events written before the hash chain were chained from "
                    "genesis now (event %d)", len(rows), self._top)

    def _insert(self, time: float, type: str, text: str, session: str | None = None) -> int:
        """Inside a transaction: write the event after the cached head (the head row in
        `meta` is written by _store_head, once per transaction)."""
        event_id = self._top + 1
        h = link_hash(self._head_hash, event_id, time, type, text)
        self._db.execute(_INSERT, (event_id, time, type, text, self._head_hash, h, session))
        self._top, self._head_hash = event_id, h
        return event_id

    def _insert_many(self, rows: list[tuple[float, str, str, str | None]]) -> list[int]:
        """_insert for a batch: the links computed in order (one native call), the rows
        in one executemany."""
        values = link_rows(self._head_hash, self._top, rows)
        if not values:
            return []
        self._db.executemany(_INSERT, values)
        self._top, self._head_hash = values[-1][0], values[-1][5]
        return [v[0] for v in values]

    def _store_head(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (HEAD_KEY, f"{self._head_hash}@{self._top}"))

    def append_batch(self, events: Sequence[tuple[float, str, Fields]]) -> list[int]:
        rows = [(float(t), type_, fields_text(fields), session_of(fields))
                for t, type_, fields in events]
        with self._lock:
            if self._closed:
                raise StoreClosed(f"the audit store {self._path} is closed")
            for retry in (False, True):
                saved = (self._top, self._head_hash)
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    ids = self._insert_many(rows)
                    self._store_head()
                    self._db.execute("COMMIT")
                    return ids
                except BaseException as e:
                    if self._db.in_transaction:  # SQLite ends some failed ones itself
                        self._db.execute("ROLLBACK")
                    self._top, self._head_hash = saved
                    if retry or not isinstance(e, sqlite3.IntegrityError):
                        raise
                    # another process appended since we cached the head: follow it
                    self._load_head()
        raise AssertionError("unreachable")

    def chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]:
        """Read on a connection of its own inside one read transaction: a consistent
        snapshot that does not hold the storage lock while the walk runs."""
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("BEGIN")
            tail = self._tail(db)
        except BaseException:
            db.close()
            raise
        return tail, self._rows(db)

    @staticmethod
    def _rows(db: sqlite3.Connection) -> Iterator[ChainedAuditEvent]:
        try:
            cur = db.execute(_ROW + " ORDER BY id")
            while batch := cur.fetchmany(1000):
                for r in batch:
                    yield ChainedAuditEvent(int(r[0]), float(r[1]), str(r[2]), str(r[3]),
                                            r[4], r[5])
        finally:
            db.close()
