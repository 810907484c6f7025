"""What the agent needs to know of each engine beyond its sign-in (`dbagent/signin.py`):
the metrics label, the route protocols a client certificate may name, and what a
session cut by the agent's shutdown tells the client — in the client's own protocol."""

from __future__ import annotations

import pytest

from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.dbagent import signin
from mwiproxy.dbagent.link import SHUTDOWN
from mwiproxy.engines.mongodb import MongoEngine
from mwiproxy.engines.mysql import MySQLEngine
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.engines.redis import RedisEngine
from mwiproxy.wire import mysql
from mwiproxy.wire import postgres as pg
from mwiproxy.wire import redis as resp


def _engine(kind: type, protocol: str):  # noqa: ANN202
    """Never dialed (no signer)."""
    return kind(DatabaseConfig("db", protocol, "127.0.0.1:1"), None)


@pytest.mark.parametrize(("kind", "protocol", "label", "routes"), [
    (PostgresEngine, "postgres", "postgres", ("postgres", "cockroachdb")),
    (PostgresEngine, "cockroachdb", "postgres", ("postgres", "cockroachdb")),
    (RedisEngine, "redis", "redis", ("redis",)),
    (MySQLEngine, "mysql", "mysql", ("mysql",)),
    (MongoEngine, "mongodb", "mongodb", ("mongodb",)),
])
def test_each_engine_s_label_and_route_protocols(kind, protocol, label, routes):
    engine = _engine(kind, protocol)
    assert signin.label(engine) == label and signin.protocols(engine) == routes


def test_a_shutdown_cut_is_told_in_the_client_s_protocol():
    said = signin.farewell(_engine(PostgresEngine, "postgres"), SHUTDOWN)
    fields = pg.parse_error_fields(said[5:])
    assert said[:1] == b"E" and fields["C"] == pg.ADMIN_SHUTDOWN and fields["M"] == SHUTDOWN
    said = signin.farewell(_engine(RedisEngine, "redis"), SHUTDOWN)
    assert resp.parse_error_reply(said) == f"ERR {SHUTDOWN}"
    said = signin.farewell(_engine(MySQLEngine, "mysql"), SHUTDOWN)
    packet, rest = mysql.split_packet(said) or (None, b"")
    assert packet is not None and rest == b"" and packet.sequence == 1
    err = mysql.parse_err(packet.payload)
    assert (err.code, err.sqlstate, err.message) == (mysql.ER_CONNECTION_KILLED,
                                                     mysql.KILLED_STATE, SHUTDOWN)
    # MongoDB has no unsolicited message: its client sees the connection close
    assert signin.farewell(_engine(MongoEngine, "mongodb"), SHUTDOWN) == b""
