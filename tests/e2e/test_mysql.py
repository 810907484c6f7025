"""MySQL/MariaDB end to end: a real MariaDB (users `REQUIRE SUBJECT '/CN=…'`, no
password) ← the cluster serving it as `example-mysql` ← local proxies in both modes,
driven by the real `mysql` client and PyMySQL.

The guide's role lists db_names [example-db] and db_users [alice]; MariaDB grants alice
`other-db` too, so what stops `USE other-db` is the proxy's check, not the server."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit import mariadb
from mwiproxy.devkit.agent import Agent, agent_yaml, db_token
from mwiproxy.devkit.mariadb import SERVICE, MySQLTopology, start_mysql_topology
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import LocalProxyProcess, wait_for
from mwiproxy.wire import mysql
from mwiproxy.wire import mysql_handshake as hs

pymysql = pytest.importorskip("pymysql")

pytestmark = pytest.mark.integration

BOB_ROLE = """\
kind: role
version: v6
metadata:
  name: bob-role
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example-db]
    db_users: [bob]
"""
WHO = ("select current_user(), database(), (select variable_value <> '' from "
       "information_schema.session_status where variable_name = 'Ssl_version')")


@pytest.fixture(scope="module")
def my(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLTopology]:
    if not mariadb.available():
        pytest.skip("MariaDB not installed")
    with start_mysql_topology(tmp_path_factory.mktemp("mysql")) as topology:
        (topology.root / "bob-role.yaml").write_text(BOB_ROLE)
        topology.cluster.ctl("create", "-f", str(topology.root / "bob-role.yaml"))
        yield topology


@pytest.fixture(scope="module")
def out(my: MySQLTopology) -> Path:
    return my.bot_output("example", service=SERVICE)


@pytest.fixture(scope="module")
def tunnel(my: MySQLTopology, out: Path) -> LocalProxyProcess:
    return my.local_proxy(out, tunnel=True, service=SERVICE)


@pytest.fixture(scope="module")
def own_tls(my: MySQLTopology, out: Path) -> LocalProxyProcess:
    return my.local_proxy(out, tunnel=False, service=SERVICE)


def _cli(lp: LocalProxyProcess, sql: str, *, out: Path | None = None, user: str = "alice",
         db: str = "example-db") -> subprocess.CompletedProcess[str]:
    """The `mysql` client; with `out`: its own TLS, verifying the cluster's certificate."""
    tls = [f"--ssl-ca={out}/teleport-host-ca.crt", f"--ssl-cert={out}/tlscert",
           f"--ssl-key={out}/key", "--ssl-verify-server-cert"] if out else []
    return subprocess.run(
        ["mysql", "--no-defaults", "-h", "localhost", "--protocol=tcp", "-P", str(lp.port),
         "-u", user, *tls, "-N", "-B", "-e", sql, *([db] if db else [])],
        capture_output=True, text=True, timeout=60)


def _connect(lp: LocalProxyProcess, out: Path | None = None, **kw: object):  # noqa: ANN202
    ssl = {"ca": f"{out}/teleport-host-ca.crt", "cert": f"{out}/tlscert",
           "key": f"{out}/key", "check_hostname": True} if out else None
    args: dict[str, object] = {"host": "localhost", "port": lp.port, "user": "alice",
                               "password": "", "database": "example-db",
                               "connect_timeout": 10, "ssl": ssl}
    args.update(kw)
    return pymysql.connect(**args)


@pytest.mark.parametrize("mode", ["tunnel", "own_tls"])
def test_mysql_client_selects_in_both_modes(my, out, tunnel, own_tls, mode):
    lp, tls = (tunnel, None) if mode == "tunnel" else (own_tls, out)
    res = _cli(lp, WHO, out=tls)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["alice@%", "example-db", "1"]  # the upstream hop is TLS


@pytest.mark.parametrize("mode", ["tunnel", "own_tls"])
def test_pymysql_selects_and_use_is_checked_in_both_modes(my, out, tunnel, own_tls, mode):
    lp, tls = (tunnel, None) if mode == "tunnel" else (own_tls, out)
    with _connect(lp, tls) as conn, conn.cursor() as cur:
        cur.execute(WHO)
        assert cur.fetchone() == ("alice@%", "example-db", 1)
        conn.select_db("example-db")  # COM_INIT_DB to an allowed schema: forwarded
        cur.execute("select database()")
        assert cur.fetchone() == ("example-db",)
        with pytest.raises(pymysql.err.OperationalError) as err:
            conn.select_db("other-db")
        assert err.value.args[0] == 1044
        assert 'db_name "other-db"' in err.value.args[1], err.value.args
    events = [e for e in my.audit("db.access.denied") if e.get("db_name") == "other-db"]
    assert events and events[-1]["protocol"] == "mysql" and "USE" in events[-1]["reason"]


def test_use_of_a_refused_schema_ends_the_session_before_the_server_sees_it(my, tunnel):
    res = _cli(tunnel, "select 1; use `other-db`; select 'after'")
    assert res.returncode != 0
    assert "ERROR 1044" in res.stderr and 'db_name "other-db"' in res.stderr, res.stderr
    assert "after" not in res.stdout
    ends = [e for e in my.audit("db.session.end") if e["db_service"] == SERVICE]
    assert ends[-1]["db_name"] == "example-db" and ends[-1]["reason"] == "refused"


def _signed_in(lp: LocalProxyProcess) -> tuple[socket.socket, object]:
    """A raw client session through `lp` (tunnel mode), signed in as alice."""
    s, reader = _raw(lp)
    seq, greeting = _read_packet(reader)
    caps = hs.PROXY_CAPS & hs.parse_greeting(greeting).capabilities | hs.CONNECT_WITH_DB
    s.sendall(mysql.packet(hs.build_handshake_response(hs.HandshakeResponse(
        caps, hs.MAX_PACKET, hs.UTF8MB4_GENERAL_CI, "alice", b"", "example-db",
        hs.NATIVE_PASSWORD)), 1))
    seq, ok = _read_packet(reader)
    assert (seq, ok[:1]) == (2, b"\x00"), ok
    return s, reader


def test_pipelined_commands_after_a_refused_use_never_reach_the_server(my, tunnel):
    assert my.maria is not None
    s, reader = _signed_in(tunnel)
    with s:
        s.sendall(mysql.packet(b"\x03select 41 + 1", 0) + hs.init_db("other-db")
                  + mysql.packet(b"\x03create table `example-db`.pipelined (x int)", 0))
        answers = []
        while header := reader.read(4):
            answers.append((header[3], reader.read(int.from_bytes(header[:3], "little"))))
    assert any(b"42" in payload for _, payload in answers)  # the query before it ran
    seq, last = answers[-1]
    assert seq == 1 and mysql.parse_err(last).code == 1044, answers[-1]
    assert my.maria.sql("select count(*) from information_schema.tables where "
                        "table_schema = 'example-db' and table_name = 'pipelined'") == "0"


def test_database_at_connect_is_checked(my, tunnel):
    res = _cli(tunnel, "select 1", db="other-db")
    assert res.returncode != 0
    assert "ERROR 1045" in res.stderr, res.stderr
    assert 'the certificate is for database "example-db", not "other-db"' in res.stderr


def test_another_user_than_the_certificate_is_refused(my, tunnel):
    res = _cli(tunnel, "select 1", user="bob")
    assert res.returncode != 0
    assert 'the certificate is for database user "alice", not "bob"' in res.stderr


def test_a_user_the_role_does_not_allow_is_refused_by_rbac(my):
    demoted = my.bot_output("demoted", service=SERVICE)
    my.cluster.ctl("bots", "update", "demoted", "--set-roles", "bob-role")
    lp = my.local_proxy(demoted, tunnel=True, service=SERVICE)
    with pytest.raises(pymysql.err.OperationalError) as err:
        _connect(lp)
    assert err.value.args[0] == 1045
    assert 'no role allows db_user "alice"' in err.value.args[1], err.value.args
    denied = [e for e in my.audit("db.access.denied") if e.get("bot") == "demoted"
              or e.get("user", "").endswith("demoted")]
    assert denied and denied[-1]["protocol"] == "mysql"


def test_non_tunnel_without_a_client_certificate_is_refused(my, out, own_tls):
    res = subprocess.run(
        ["mysql", "--no-defaults", "-h", "localhost", "--protocol=tcp", "-P",
         str(own_tls.port), "-u", "alice", f"--ssl-ca={out}/teleport-host-ca.crt",
         "--ssl-verify-server-cert", "-e", "select 1", "example-db"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "no client certificate was presented" in res.stderr, res.stderr


def test_a_lock_cuts_a_live_session(my):
    lp = my.local_proxy(my.bot_output("lockme", service=SERVICE), tunnel=True,
                        service=SERVICE)
    conn = _connect(lp)
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
            my.cluster.ctl("lock", "--bot=lockme", "--message", "incident 7")
            assert wait_for(lambda: any(
                e["reason"] == "locked" for e in my.audit("db.session.end")
                if e.get("bot") == "lockme"), timeout=10)
            with pytest.raises(pymysql.err.MySQLError) as err:
                cur.execute("select 2")
                cur.fetchone()
        assert "incident 7" in str(err.value) or err.value.args[0] in (1927, 2013), err.value
    finally:
        conn.close()


def test_change_user_is_refused_on_a_raw_session(my, tunnel):
    s, reader = _signed_in(tunnel)
    with s:
        change = bytes([hs.COM_CHANGE_USER]) + b"root\x00\x00example-db\x00"
        s.sendall(mysql.packet(change, 0))
        seq, err = _read_packet(reader)
        assert seq == 1
        parsed = mysql.parse_err(err)
        assert parsed.code == mysql.ER_ACCESS_DENIED and "COM_CHANGE_USER" in parsed.message
        assert reader.read(1) == b""  # and the session is over
    events = my.audit("db.access.denied")
    assert any("COM_CHANGE_USER" in e["reason"] for e in events)


def test_a_big_result_set_streams(my, tunnel):
    with _connect(tunnel) as conn, conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("select repeat('x', 1000000) from seq_1_to_12")
        total = sum(len(row[0]) for row in cur)
    assert total == 12_000_000
    assert wait_for(lambda: any(e["bytes_db_to_client"] > 12_000_000
                                for e in my.audit("db.session.end")
                                if e["db_service"] == SERVICE))


def _raw(lp: LocalProxyProcess) -> tuple[socket.socket, object]:
    s = socket.create_connection(("127.0.0.1", lp.port), timeout=15)
    return s, s.makefile("rb")


def _read_packet(reader) -> tuple[int, bytes]:  # noqa: ANN001
    header = reader.read(4)
    assert len(header) == 4, header
    return header[3], reader.read(int.from_bytes(header[:3], "little"))


def test_an_oversized_handshake_packet_is_refused_unread(my, tunnel):
    s, reader = _raw(tunnel)
    with s:
        assert _read_packet(reader)[0] == 0  # the greeting
        s.sendall(b"\xff\xff\xff\x01")  # announces 16 MiB, sends none of it
        seq, err = _read_packet(reader)
        parsed = mysql.parse_err(err)
        assert seq == 1 and parsed.code == 1158 and "exceeds" in parsed.message
        assert reader.read(1) == b""


def test_a_non_ascii_database_name_is_refused(my, tunnel):
    with pytest.raises(pymysql.err.OperationalError) as err:
        _connect(tunnel, database="exämple-db")
    assert err.value.args[0] == 1045 and "only ASCII" in err.value.args[1]


@pytest.mark.parametrize("via_agent", [False, True])
def test_mysqlslap_through_the_tunnel_has_no_errors(my, tunnel, request, via_agent):
    """In this process or behind a database agent (`agent`, below), alike."""
    lp = my.local_proxy(request.getfixturevalue("agent_out"), tunnel=True,
                        service=AGENT_MYSQL) if via_agent else tunnel
    res = subprocess.run(
        ["mysqlslap", "--no-defaults", "-h", "127.0.0.1", "-P", str(lp.port), "-u",
         "alice", "--create-schema=example-db", "--no-drop", "--concurrency=4",
         "--iterations=3", "--number-of-queries=200",
         "--query=select count(*) from information_schema.tables"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Number of clients running queries: 4" in res.stdout


PASSWORD_ROLE = BOB_ROLE.replace("bob-role", "pw-role").replace("[bob]", "[dave, erin]")


@pytest.mark.parametrize("user, create", [
    ("dave", "IDENTIFIED BY 'secret'"),  # the server asks the engine for a password
    ("erin", "IDENTIFIED VIA ed25519 USING PASSWORD('secret')"),  # an AuthSwitchRequest
])
def test_the_databases_refusal_reaches_the_client_as_its_err_packet(my, user, create):
    assert my.maria is not None
    if user == "erin" and not my.maria.sql(
            "select 1 from information_schema.plugins where plugin_name = 'ed25519'"):
        my.maria.sql("INSTALL SONAME 'auth_ed25519'")
    my.maria.sql(f"CREATE USER '{user}'@'%' {create} REQUIRE SUBJECT '/CN={user}'")
    my.maria.sql(f"GRANT ALL PRIVILEGES ON `example-db`.* TO '{user}'@'%'")
    (my.root / "pw-role.yaml").write_text(PASSWORD_ROLE)
    if user == "dave":
        my.cluster.ctl("create", "-f", str(my.root / "pw-role.yaml"))
    out = my.bot_output(f"pw-{user}", service=SERVICE, username=user, roles="pw-role")
    lp = my.local_proxy(out, tunnel=True, service=SERVICE)
    with pytest.raises(pymysql.err.OperationalError) as err:
        _connect(lp, user=user)
    assert err.value.args[0] == 1045, err.value.args  # MariaDB's own ER_ACCESS_DENIED
    assert f"Access denied for user '{user}'@" in err.value.args[1]
    starts = [e for e in my.audit("db.session.start") if e.get("db_user") == user]
    assert starts and not starts[-1]["success"] and "database refused" in starts[-1]["error"]


def test_the_greeting_carries_the_servers_version_once_known(my, tunnel):
    assert my.maria is not None
    res = _cli(tunnel, "select version()")  # a session: the engine read the greeting
    assert res.returncode == 0, res.stderr
    s, reader = _raw(tunnel)
    with s:
        seq, payload = _read_packet(reader)
    greeting = hs.parse_greeting(payload)
    assert greeting.server_version.endswith(my.maria.sql("select version()"))
    assert res.stdout.strip() == my.maria.sql("select version()")
    # offered: what the proxy honours end to end, and never these
    assert greeting.capabilities & ~hs.PROXY_CAPS == 0
    for flag in (hs.COMPRESS, hs.LOCAL_FILES, hs.DEPRECATE_EOF, hs.SESSION_TRACK, hs.SSL):
        assert not greeting.capabilities & flag


def test_mysql_sessions_are_counted_in_the_metrics(my, tunnel):
    s, reader = _signed_in(tunnel)
    with s:
        s.sendall(mysql.packet(b"\x03select 1", 0) + hs.init_db("other-db"))
        while reader.read(4096):
            pass
    label = 'mode="tunnel",protocol="mysql"'
    refused = re.compile(r'mwiproxy_db_connections_closed_total\{' + label
                         + r',reason="refused",service="example-mysql"\} [1-9]')
    assert wait_for(lambda: refused.search(my.metrics()), timeout=20)
    text = my.metrics()
    ok = re.search(r'mwiproxy_db_connections_total\{' + label
                   + r',result="success",service="example-mysql"\} (\S+)', text)
    assert ok and float(ok.group(1)) >= 1, text[:2000]
    assert re.search(r'mwiproxy_db_transmit_bytes_total\{[^}]*protocol="mysql"[^}]*\} '
                     r'[1-9]', text), "no MySQL bytes counted"


@pytest.mark.parametrize("tunnel_mode", [True, False])
def test_unframed_in_both_modes(my, out, tunnel_mode):
    """`--no-ping`: plain `teleport-mysql` (the other tests run framed, the default)."""
    lp = my.local_proxy(out, tunnel=tunnel_mode, service=SERVICE, extra=("--no-ping",))
    res = _cli(lp, WHO, out=None if tunnel_mode else out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["alice@%", "example-db", "1"]
    res = _cli(lp, "use `other-db`", out=None if tunnel_mode else out)
    assert "ERROR 1044" in res.stderr and 'db_name "other-db"' in res.stderr, res.stderr


# -- the same MariaDB served by a database agent ----------------------------------------

AGENT_MYSQL = "agent-mysql"
AGENT_DOWN = "agent-mysql-down"  # registered by the agent, its database not listening
GINA_ROLE = BOB_ROLE.replace("bob-role", "gina-role").replace("[bob]", "[gina]")


@pytest.fixture(scope="module")
def agent(my: MySQLTopology) -> Iterator[Agent]:
    assert my.maria is not None
    agent = Agent(my, "mysql", service_extra="  drain_timeout: 1s\n", template=agent_yaml(
        (AGENT_MYSQL, "mysql", f"127.0.0.1:{my.maria.port}"),
        (AGENT_DOWN, "mysql", f"127.0.0.1:{free_port()}")))
    agent.start(token=db_token(my))
    try:
        listed = lambda: AGENT_DOWN in my.cluster.ctl("db", "ls").stdout  # noqa: E731
        assert wait_for(listed, timeout=20), my.cluster.ctl("db", "ls").stdout
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def agent_out(my: MySQLTopology, agent: Agent) -> Path:
    return my.bot_output("my-agent", service=AGENT_MYSQL)


@pytest.mark.parametrize("mode", ["tunnel", "own_tls"])
def test_clients_through_a_database_agent_in_both_modes(my, agent_out, mode):
    """The agent signs in (TLS upgrade in MariaDB's protocol, certificate CN=alice, the
    session grant paying for it); the greeting, RBAC and the held USE stay at the
    cluster proxy."""
    tunnel = mode == "tunnel"
    lp = my.local_proxy(agent_out, tunnel=tunnel, service=AGENT_MYSQL)
    tls = None if tunnel else agent_out
    res = _cli(lp, WHO, out=tls)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["alice@%", "example-db", "1"]
    with _connect(lp, tls) as conn, conn.cursor() as cur:
        cur.execute("select repeat('x', 1 << 20)")  # a result bigger than any buffer
        assert len(cur.fetchone()[0]) == 1 << 20
        with pytest.raises(pymysql.err.OperationalError) as err:
            conn.select_db("other-db")
        assert err.value.args[0] == 1044 and 'db_name "other-db"' in err.value.args[1]
    bot = "bot-my-agent"
    starts = [e for e in my.audit("db.session.start")
              if e.get("user") == bot and e["db_service"] == AGENT_MYSQL]
    assert starts and all(e["success"] and e["protocol"] == "mysql" for e in starts)
    assert wait_for(lambda: any(e.get("user") == bot and e["reason"] == "refused"
                                for e in my.audit("db.session.end")), timeout=20)


def test_refusals_through_a_database_agent_are_mysql_err_packets(my, agent, agent_out):
    assert my.maria is not None
    tunnel = my.local_proxy(agent_out, tunnel=True, service=AGENT_MYSQL)
    # refused at the cluster proxy: not the certificate's user
    res = _cli(tunnel, "select 1", user="bob")
    assert "ERROR 1045" in res.stderr and '"alice", not "bob"' in res.stderr, res.stderr
    # refused by the database, behind the agent: its own ERR packet
    my.maria.sql("CREATE USER 'gina'@'%' IDENTIFIED BY 'secret' REQUIRE SUBJECT '/CN=gina'")
    (my.root / "gina-role.yaml").write_text(GINA_ROLE)
    my.cluster.ctl("create", "-f", str(my.root / "gina-role.yaml"))
    out = my.bot_output("my-agent-gina", service=AGENT_MYSQL, username="gina",
                        roles="gina-role")
    lp = my.local_proxy(out, tunnel=True, service=AGENT_MYSQL)
    with pytest.raises(pymysql.err.OperationalError) as err:
        _connect(lp, user="gina")
    assert err.value.args[0] == 1045 and "Access denied for user 'gina'@" in err.value.args[1]
    # the database behind the agent does not answer: told so, as a MySQL error
    down = my.local_proxy(my.bot_output("my-agent-down", service=AGENT_DOWN), tunnel=True,
                          service=AGENT_DOWN)
    with pytest.raises(pymysql.err.OperationalError) as err:
        _connect(down)
    assert err.value.args[0] == 1105, err.value.args  # as in-process (test_other_protocols)
    assert f"cannot reach database '{AGENT_DOWN}'" in err.value.args[1]
    res = _cli(down, "select 1")  # the mysql client shows the reason, not "malformed"
    assert f"ERROR 1105 (HY000) at line 1: cannot reach database '{AGENT_DOWN}'" in \
        res.stderr or f"ERROR 1105 (HY000): cannot reach database '{AGENT_DOWN}'" in \
        res.stderr, res.stderr
    starts = {e["db_service"]: e for e in my.audit("db.session.start")
              if e.get("user") in ("bot-my-agent-gina", "bot-my-agent-down")}
    assert "database refused" in starts[AGENT_MYSQL]["error"]
    assert "cannot reach database" in starts[AGENT_DOWN]["error"]


def test_a_stopped_agent_cuts_its_sessions_then_is_refused_as_mysql_errors(my, agent,
                                                                           agent_out):
    """Last of the agent's tests: it stops the agent. A query outliving its drain
    timeout (1 s) is cut with an ERR packet saying why; then the database is gone."""
    maria = my.maria
    assert maria is not None
    tunnel = my.local_proxy(agent_out, tunnel=True, service=AGENT_MYSQL)

    def sleeping() -> list[str]:
        return maria.sql("select id from information_schema.processlist "
                         "where info = 'select sleep(29)'").split()

    long = subprocess.Popen(
        ["mysql", "--no-defaults", "-h", "localhost", "--protocol=tcp", "-P",
         str(tunnel.port), "-u", "alice", "-e", "select sleep(29)", "example-db"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(sleeping()) == 1, timeout=30), "the query is running"
        agent.stop()  # SIGTERM: the drain, the cut, then its goodbye
        _, err = long.communicate(timeout=20)  # well before the query's own 29 s
        assert "ERROR 1927" in err and "the database agent is shutting down" in err, err
    finally:
        if long.poll() is None:
            long.kill()
        for query in sleeping():  # the cut connection's query sleeps on: end it
            maria.sql(f"KILL {query}")
    assert "drained: 0 link session(s) finished, 1 cut" in agent.log.read_text()
    assert wait_for(lambda: AGENT_MYSQL not in my.cluster.ctl("db", "ls").stdout, timeout=15)
    res = _cli(tunnel, "select 1")  # refused in place of the greeting (tunnel mode)
    assert "1045 - access to db denied" in res.stderr, res.stderr
    assert f"'{AGENT_MYSQL}' is not served by this cluster" in res.stderr, res.stderr
