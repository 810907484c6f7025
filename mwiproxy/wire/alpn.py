"""ALPN protocol names spoken on the cluster proxy's single port (Teleport's names)."""

from __future__ import annotations

AUTH = "mwi-auth"
POSTGRES = "teleport-postgres"
MYSQL = "teleport-mysql"
MONGODB = "teleport-mongodb"
REDIS = "teleport-redis"
PING_SUFFIX = "-ping"
# the web UI: HTTP/1.1 by ALPN, or a TLS client that offers no ALPN at all (NONE is the
# listener's key for those; it is never offered). A browser offering h2 and http/1.1
# gets http/1.1; h2 is not served.
HTTP1 = "http/1.1"
NONE = ""

DATABASE_PROTOCOLS = {
    "postgres": POSTGRES,
    "cockroachdb": POSTGRES,
    "mysql": MYSQL,
    "mongodb": MONGODB,
    "redis": REDIS,
}


def with_ping(name: str) -> str:
    return name + PING_SUFFIX
