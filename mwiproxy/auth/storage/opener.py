"""The storage cluster.yaml asks for: SQLite (the embedded default) or PostgreSQL."""

from __future__ import annotations

from mwiproxy.auth.storage.base import Storage
from mwiproxy.config.cluster import ClusterConfig


def open_storage(config: ClusterConfig) -> Storage:
    if config.storage.type == "postgres":
        from mwiproxy.auth.storage.pg_conn import StorageUnavailable
        from mwiproxy.auth.storage.pg_schema import SchemaTooNew
        from mwiproxy.auth.storage.postgres import PostgresStorage  # needs psycopg

        try:
            return PostgresStorage(config.storage.resolved_conn_string())
        except (StorageUnavailable, SchemaTooNew) as e:  # said in one line at start
            raise ValueError(f"storage: {e}") from None
    from mwiproxy.auth.storage.sqlite import SQLiteStorage

    return SQLiteStorage(config.storage_path)
