"""Storage backends for tests: a SQLite file, or a fresh database on one PostgreSQL server
per test session (started by the dev kit as an unprivileged user, like the data path's)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from mwiproxy.auth.storage.base import Storage
from mwiproxy.devkit.postgres import PostgresServer

BACKENDS = ("sqlite", "postgres")
_numbers = itertools.count(1)


class StorageServer:
    """The session's PostgreSQL for storage tests: `fresh()` gives each test its own
    database (created empty), so tests never see each other's rows."""

    def __init__(self) -> None:
        self.server = PostgresServer().start()

    def conn_string(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.server.port} user=postgres dbname={dbname}"

    def fresh(self) -> str:
        name = f"mwi_store_{next(_numbers)}"
        self.server.psql(f"CREATE DATABASE {name}")
        return self.conn_string(name)

    def stop(self) -> None:
        self.server.stop()


def opener(backend: str, tmp_path: Path, pg: Callable[[], StorageServer]
           ) -> Callable[[], Storage]:
    """Opens a Storage on one test's state, as often as asked (several processes' view
    of one database)."""
    if backend == "sqlite":
        from mwiproxy.auth.storage.sqlite import SQLiteStorage

        path = str(tmp_path / "state.db")
        return lambda: SQLiteStorage(path)
    from mwiproxy.auth.storage.postgres import PostgresStorage

    conn_string = pg().fresh()
    return lambda: PostgresStorage(conn_string)
