"""MySQL, Redis and MongoDB databases listed in cluster.yaml, with no server behind them:
through the local proxy in tunnel mode each real client (PyMySQL, redis-py, pymongo) is
refused in its own protocol and shows why — the access check's reason, or that its
database cannot be reached (each engine's own suite: tests/e2e/test_mysql.py,
test_redis.py, test_mongodb.py). Each refusal is audited, and PostgreSQL keeps being
served.

No MySQL, Redis or MongoDB server runs: their uris point at unused ports."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from mwiproxy.auth.client import AuthClient
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from mwiproxy.wire import alpn, ping
from mwiproxy.wire import redis as resp
from tests._testbase import postgres
from tests._testbase.cluster import ClusterProcess
from tests._testbase.fixtures import GUIDE_ROLE
from tests._testbase.ports import free_port
from tests.e2e.conftest import LocalProxyProcess, Topology, _start_postgres

pymysql = pytest.importorskip("pymysql")
redis = pytest.importorskip("redis")
pymongo = pytest.importorskip("pymongo")

pytestmark = pytest.mark.integration

MYSQL, REDIS, MONGO = "example-mysql", "example-redis", "example-mongo"
CLUSTER_YAML = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {{data_dir}}
proxy:
  listen_addr: 127.0.0.1:{{port}}
databases:
  - name: example-server
    protocol: postgres
    uri: 127.0.0.1:{pg}
    static_labels: {{{{env: dev}}}}
  - name: example-mysql
    protocol: mysql
    uri: 127.0.0.1:{mysql}
    static_labels: {{{{env: dev}}}}
  - name: example-redis
    protocol: redis
    uri: 127.0.0.1:{redis}
    static_labels: {{{{env: dev}}}}
  - name: example-mongo
    protocol: mongodb
    uri: 127.0.0.1:{mongo}
    static_labels: {{{{env: prod}}}}
"""
# roles a bot is moved to after its certificate was issued (RBAC runs on every connect)
BOB_ROLE = GUIDE_ROLE.replace("example-role", "bob-role").replace("[alice]", "[bob]")
DEV_ROLE = GUIDE_ROLE.replace("example-role", "dev-role").replace("'*': '*'", "env: dev")
USERS_DENIED = 'access to db denied: no role allows db_user "alice" on database "{}"'
LABELS_DENIED = ("access to db denied: no role allows access to database labels "
                 "{{'env': 'prod'}} on database \"{}\"")


class Others(Topology):
    def issue(self, bot: str, service: str, *, username: str = "alice",
              database: str = "example-db", move_to_role: str = "") -> Path:
        """A bot's database output for `service`, issued under example-role; then the
        bot is moved to `move_to_role` if given."""
        key = generate_private_key()
        with AuthClient(self.cluster.addr, ca_pems=self.host_ca) as anon:
            joined = anon.call("join", token=self.add_bot(bot),
                               public_key=public_key_pem(key.public_key()).decode())
        with AuthClient(self.cluster.addr, ca_pems=self.host_ca,
                        cert_pem=joined["cert"].encode(), key_pem=private_key_pem(key)) as c:
            db_key = generate_private_key()
            got = c.call("issue_database_cert", public_key=public_key_pem(
                db_key.public_key()).decode(), service=service, database=database,
                username=username, ttl="10m")
        if move_to_role:
            self.cluster.ctl("bots", "update", bot, "--set-roles", move_to_role)
        return self.write_output(bot, private_key_pem(db_key), got["cert"].encode(),
                                 got["cas"])

    def proxy(self, out: Path, service: str, *, tunnel: bool = True,
              proxy_addr: str = "", extra: tuple[str, ...] = ()) -> LocalProxyProcess:
        port = free_port()
        log = self.root / f"localproxy-{port}.log"
        cmd = [sys.executable, "-m", "mwiproxy.cli.mwibot", "proxy",
               f"--proxy={proxy_addr or self.cluster.addr}", f"--destination-dir={out}",
               "db", f"--port={port}", *(["--tunnel"] if tunnel else []), *extra, service]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        lp = LocalProxyProcess(proc, port, log)
        self.proxies.append(lp)
        return lp

    def started(self, lp: LocalProxyProcess) -> LocalProxyProcess:
        line = lp.proc.stdout.readline() if lp.proc.stdout else ""
        assert "listening on" in line, f"local proxy failed: {line}{lp.log.read_text()}"
        return lp


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory):
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    root = tmp_path_factory.mktemp("others")
    pg = postgres.PostgresServer(hba=["local all all trust", "hostssl all all 127.0.0.1/32 cert"])
    config = CLUSTER_YAML.format(pg=pg.port, mysql=free_port(), redis=free_port(),
                                 mongo=free_port())
    cluster = ClusterProcess(root / "data", config=config).start()
    topology = Others(root, cluster, pg)
    try:
        _start_postgres(pg, cluster, root)
        for name, role in (("example", GUIDE_ROLE), ("bob", BOB_ROLE), ("dev", DEV_ROLE)):
            (root / f"{name}-role.yaml").write_text(role)
            cluster.ctl("create", "-f", str(root / f"{name}-role.yaml"))
        yield topology
    finally:
        for lp in topology.proxies:
            lp.stop()
        cluster.stop()
        pg.stop()


def _mysql_error(lp: LocalProxyProcess) -> str:
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host="127.0.0.1", port=lp.port, user="alice", password="",
                        database="example-db", connect_timeout=10)
    return str(err.value)


def _redis_error(lp: LocalProxyProcess) -> str:
    client = redis.Redis(host="127.0.0.1", port=lp.port, username="alice",
                         socket_timeout=10, socket_connect_timeout=10)
    with pytest.raises(redis.exceptions.RedisError) as err:
        client.ping()
    client.close()
    return str(err.value)


def _mongo_error(lp: LocalProxyProcess) -> str:
    client = pymongo.MongoClient(host="127.0.0.1", port=lp.port, directConnection=True,
                                 serverSelectionTimeoutMS=1500, connectTimeoutMS=5000)
    try:
        with pytest.raises(pymongo.errors.PyMongoError) as err:
            client.admin.command("ping")
    finally:
        client.close()
    return str(err.value)


@pytest.fixture(scope="module")
def pg_tunnel(others: Others) -> LocalProxyProcess:
    return others.local_proxy(others.bot_output("pg"), tunnel=True)


def _still_serving_postgres(others: Others, pg_tunnel: LocalProxyProcess) -> None:
    res = others.psql(others.dsn(pg_tunnel), "select 1")
    assert res.stdout.strip() == "1", res.stderr


def _denied(others: Others, protocol: str, service: str) -> list[dict[str, object]]:
    return [e for e in others.audit("db.access.denied")
            if e.get("protocol") == protocol and e.get("db_service") == service]


def test_mysql_is_served_and_refusals_are_in_mysql_format(others, pg_tunnel):
    """MySQL has an engine now (tests/e2e/test_mysql.py): with no server at its uri, an
    allowed client is told the database cannot be reached; a denied one why not."""
    allowed = others.started(others.proxy(others.issue("my-ok", MYSQL), MYSQL))
    message = _mysql_error(allowed)
    print("PyMySQL (allowed, no server):", message)
    assert message.startswith("(1105, ") and f"cannot reach database '{MYSQL}'" in message

    demoted = others.issue("my-bob", MYSQL, move_to_role="bob-role")
    message = _mysql_error(others.started(others.proxy(demoted, MYSQL)))
    print("PyMySQL (denied):", message)
    assert message == f"(1045, '{USERS_DENIED.format(MYSQL)}')"

    events = _denied(others, "mysql", MYSQL)
    assert any(e["user"] == "bot-my-bob" and e["db_user"] == "alice"
               and e["db_name"] == "example-db" for e in events), events
    starts = [e for e in others.audit("db.session.start") if e.get("user") == "bot-my-ok"]
    assert starts and not starts[-1]["success"] and "cannot reach" in starts[-1]["error"]
    _still_serving_postgres(others, pg_tunnel)


def test_redis_is_refused_in_resp(others, pg_tunnel):
    allowed = others.started(others.proxy(others.issue("rd-ok", REDIS, database=""), REDIS))
    message = _redis_error(allowed)
    print("redis-py (allowed):", message)  # Redis is served (test_redis.py): none runs here
    assert message.startswith(f"cannot reach database '{REDIS}' at 127.0.0.1:")

    demoted = others.issue("rd-bob", REDIS, database="", move_to_role="bob-role")
    message = _redis_error(others.started(others.proxy(demoted, REDIS)))
    print("redis-py (denied):", message)
    assert message == USERS_DENIED.format(REDIS)

    events = _denied(others, "redis", REDIS)
    assert any(e["user"] == "bot-rd-bob" and e["db_user"] == "alice"
               and "alice" in str(e["reason"]) for e in events), events
    _still_serving_postgres(others, pg_tunnel)


def test_mongodb_is_refused_with_a_command_error(others, pg_tunnel):
    allowed = others.started(others.proxy(others.issue("mg-ok", MONGO), MONGO))
    message = _mongo_error(allowed)
    print("pymongo (allowed):", message)
    assert f"cannot reach database '{MONGO}'" in message and "HostUnreachable" in message

    demoted = others.issue("mg-dev", MONGO, move_to_role="dev-role")
    message = _mongo_error(others.started(others.proxy(demoted, MONGO)))
    print("pymongo (denied):", message)
    assert LABELS_DENIED.format(MONGO) in message
    assert "'code': 13" in message and "Unauthorized" in message

    events = _denied(others, "mongodb", MONGO)
    assert any(e["user"] == "bot-mg-dev" and "labels" in str(e["reason"])
               for e in events), events
    _still_serving_postgres(others, pg_tunnel)


def test_a_certificate_for_another_protocol_is_refused(others):
    """A Redis certificate presented on `teleport-mysql` fails the same check as
    everywhere: the protocol in the route must be the one spoken."""
    out = others.issue("cross", REDIS, database="")
    with socket.create_connection(("127.0.0.1", others.cluster.port), timeout=10) as raw:
        with _tls(out, alpn.MYSQL).wrap_socket(raw, server_hostname="localhost") as s:
            data = _read_all(s)
    assert data[4] == 0xFF and b"#28000" in data
    assert b"the certificate is for a redis database, not this protocol" in data


def test_the_ping_variant_frames_the_refusal(others):
    out = others.issue("rd-ping", REDIS, database="")
    with socket.create_connection(("127.0.0.1", others.cluster.port), timeout=10) as raw:
        with _tls(out, alpn.with_ping(alpn.REDIS)).wrap_socket(
                raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "teleport-redis-ping"
            s.sendall(ping.frame(resp.encode_command("PING")))
            s.sendall(ping.frame(b""))  # a keepalive from our side is ignored
            s.sendall(ping.frame(resp.encode_command("QUIT")))
            deframer = ping.Deframer()
            payload = b""
            while payload.count(b"\r\n") < 2 and (data := s.recv(65536)):
                payload += deframer.feed(data)
    assert payload.count(b"-ERR cannot reach database 'example-redis'") == 2, payload


def test_the_local_proxy_speaks_mysql_when_the_cluster_is_unreachable(others):
    out = others.issue("my-lost", MYSQL)
    lp = others.started(others.proxy(out, MYSQL, proxy_addr=f"127.0.0.1:{free_port()}"))
    message = _mysql_error(lp)
    print("PyMySQL (cluster down):", message)
    assert message.startswith("(1105, ") and "mwibot local proxy: cannot reach the " \
        "cluster proxy" in message
    assert "cannot reach the cluster proxy" in lp.log.read_text()


def test_mysql_through_a_ping_framed_local_proxy(others):
    lp = others.started(others.proxy(others.issue("my-ping", MYSQL), MYSQL,
                                     extra=("--ping",)))
    assert f"cannot reach database '{MYSQL}'" in _mysql_error(lp)


def _tls(out: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(out / "teleport-host-ca.crt"))
    ctx.load_cert_chain(str(out / "tlscert"), str(out / "key"))
    ctx.set_alpn_protocols([name])
    return ctx


def _read_all(s: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    return data


def test_audit_events_carry_the_protocol(others):
    events = others.audit("db.access.denied")
    protocols = {e.get("protocol") for e in events}
    assert {"mysql", "redis", "mongodb"} <= protocols, json.dumps(events[-5:])
    for e in events:
        if e.get("protocol") in ("mysql", "redis", "mongodb"):
            assert e["remote"] and e["reason"] and e["db_service"], e
