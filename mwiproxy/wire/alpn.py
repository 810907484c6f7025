"""ALPN protocol names spoken on the cluster proxy's single port (Teleport's names)."""

from __future__ import annotations

AUTH = "mwi-auth"
POSTGRES = "teleport-postgres"
MYSQL = "teleport-mysql"
MONGODB = "teleport-mongodb"
REDIS = "teleport-redis"
PING_SUFFIX = "-ping"

DATABASE_PROTOCOLS = {
    "postgres": POSTGRES,
    "cockroachdb": POSTGRES,
    "mysql": MYSQL,
    "mongodb": MONGODB,
    "redis": REDIS,
}


def with_ping(name: str) -> str:
    return name + PING_SUFFIX
