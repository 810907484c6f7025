"""A real PostgreSQL 15 server: the dev kit's (mwiproxy.devkit.postgres)."""

from __future__ import annotations

from mwiproxy.devkit.postgres import PG_BIN, PostgresServer, available

__all__ = ["PG_BIN", "PostgresServer", "available"]
