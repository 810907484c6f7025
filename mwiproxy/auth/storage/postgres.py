"""PostgreSQL storage: the same records and guarantees as SQLite, in a database several
processes can reach (`storage: {type: postgres, conn_string: ...}` in cluster.yaml).

The atomic steps are single conditional statements, so they hold across processes:
a generation bump is `UPDATE ... WHERE generation = expected`, a token is used by
`UPDATE ... WHERE used_at IS NULL AND expires > now` (the statements are sqlstore.py's,
shared with SQLite); the audit chain is in pg_audit.py,
the schema and its migrations in pg_schema.py, reconnection in pg_conn.py, the notices
that tell other cluster processes about a new lock in pg_locks.py.

Calls are synchronous, like SQLite's: the auth API runs them on its worker threads, the
proxy's access check at session start on a worker thread too (`remote`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from mwiproxy.auth.storage.base import LockRecord
from mwiproxy.auth.storage.pg_audit import PostgresAudit
from mwiproxy.auth.storage.pg_conn import Connection
from mwiproxy.auth.storage.pg_locks import CHANNEL, LockNotices
from mwiproxy.auth.storage.pg_schema import migrate
from mwiproxy.auth.storage.sqlstore import (
    LOCK_COLUMNS,
    Dialect,
    Row,
    SQLStorage,
    Statement,
    lock_values,
)


class PostgresStorage(SQLStorage):
    remote = True
    dialect = Dialect("%s", any_array=True)

    def __init__(self, conn_string: str) -> None:
        self._conn_string = conn_string
        self._conn = Connection(conn_string, "storage")
        try:
            guards_missing = self._conn.run(migrate, read=False)
            self._audit = PostgresAudit(conn_string, guards_missing)
        except BaseException:
            self._conn.close()
            raise

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read: retried once on a new connection if the connection was lost."""
        return self._conn.run(lambda c: c.execute(sql, args).fetchall(),  # type: ignore[arg-type]
                              read=True)

    def _x(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.run(lambda c: c.execute(sql, args).rowcount,  # type: ignore[arg-type]
                              read=False)

    def _x_rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._conn.run(lambda c: c.execute(sql, args).fetchall(),  # type: ignore[arg-type]
                              read=False)

    def _x_each(self, statements: Sequence[Statement]) -> list[int]:
        def each(conn: psycopg.Connection[Any]) -> list[int]:
            with conn.transaction():
                return [conn.execute(sql, args).rowcount  # type: ignore[arg-type]
                        for sql, args in statements]
        return self._conn.run(each, read=False)

    def create_lock(self, lock: LockRecord) -> None:
        # the notice is sent at commit, with the row: a listener that hears it finds it
        self._x(f"WITH added AS ({self._insert('locks', LOCK_COLUMNS)} RETURNING lock_id) "
                f"SELECT pg_notify('{CHANNEL}', lock_id) FROM added", lock_values(lock))

    def lock_notices(self) -> LockNotices:
        return LockNotices(self._conn_string)

    def close(self) -> None:
        self._audit.close()
        self._conn.close()
