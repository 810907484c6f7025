"""The audit table of PostgresStorage: hash-chained appends (chain.py) and snapshot reads.

Several processes may append to one database, so nothing about the head is cached: each
batch takes the tail row `FOR UPDATE` (appends from every process queue behind it), links
its events onto the recorded head, and moves the head, in one transaction. Two processes
therefore never fork the chain. Appends use a connection of their own, as in SQLite, so
a slow append never holds the storage connection the proxy's access checks read through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from mwiproxy.auth.storage.base import AuditHead, AuditTail, ChainedAuditEvent, Fields
from mwiproxy.auth.storage.chain import GENESIS, fields_text, link_rows, session_of
from mwiproxy.auth.storage.pg_conn import Connection, open_connection

_ROW = "SELECT id, time, type, fields, prev_hash, hash FROM audit"
_TAIL = "SELECT head_id, head_hash, highest_id FROM audit_tail"
FETCH = 1000


def _tail(row: tuple[Any, ...] | None) -> AuditTail:
    if row is None:
        return AuditTail(None, 0)
    head_id, head_hash, highest = row
    head = AuditHead(int(head_id), str(head_hash)) if head_id is not None else None
    return AuditTail(head, int(highest))


class PostgresAudit:
    def __init__(self, conn_string: str, guards_missing: list[str]) -> None:
        self._conn_string = conn_string
        self._conn = Connection(conn_string, "audit")
        self.guards_missing = guards_missing

    def close(self) -> None:
        self._conn.close()

    def append_batch(self, events: Sequence[tuple[float, str, Fields]]) -> list[int]:
        rows = [(float(t), type_, fields_text(fields), session_of(fields))
                for t, type_, fields in events]
        return self._conn.run(lambda conn: self._append(conn, rows), read=False)

    @staticmethod
    def _append(conn: psycopg.Connection[Any],
                rows: list[tuple[float, str, str, str | None]]) -> list[int]:
        with conn.transaction():
            row = conn.execute(_TAIL + " FOR UPDATE").fetchone()
            if row is None:  # the tail row was deleted: verification reports it; start over
                conn.execute("INSERT INTO audit_tail (highest_id) VALUES (0) "
                             "ON CONFLICT DO NOTHING")
                row = conn.execute(_TAIL + " FOR UPDATE").fetchone()
            tail = _tail(row)
            last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"
                                ).fetchone()
            # link onto the recorded head, not onto whatever row is last, so deleted or
            # forged events at the end stay visible as a break (as in SQLite)
            top = max(tail.head.event_id if tail.head else 0, tail.highest_id,
                      int(last[0]) if last else 0)
            prev = tail.head.hash if tail.head else ((last[1] if last else None) or GENESIS)
            values = link_rows(prev, top, rows)
            if values:
                top, prev = values[-1][0], values[-1][5]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO audit (id, time, type, fields, prev_hash, hash, "
                                "session) VALUES (%s, %s, %s, %s, %s, %s, %s)", values)
            conn.execute("UPDATE audit_tail SET head_id = %s, head_hash = %s, "
                         "highest_id = %s", (top, prev, top))
        return [v[0] for v in values]

    def chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]:
        """On a connection of its own, in one REPEATABLE READ transaction: the tail and
        the rows from the same snapshot, streamed through a server-side cursor."""
        conn = open_connection(self._conn_string)
        try:
            conn.autocommit = False
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tail = _tail(conn.execute(_TAIL).fetchone())
        except BaseException:
            conn.close()
            raise
        return tail, self._rows(conn)

    @staticmethod
    def _rows(conn: psycopg.Connection[Any]) -> Iterator[ChainedAuditEvent]:
        try:
            with conn.cursor(name="mwi_audit_walk") as cur:
                cur.itersize = FETCH
                cur.execute(_ROW + " ORDER BY id")
                for r in cur:
                    yield ChainedAuditEvent(int(r[0]), float(r[1]), str(r[2]), str(r[3]),
                                            r[4], r[5])
        finally:
            conn.close()
