"""Query audit (issue 14) against a real PostgreSQL through the cluster proxy: psql,
psycopg's simple and extended protocol and pipeline mode, a failing statement, pgbench,
a 1 MB statement and a malformed message, each found in the audit log with its result
summary. Runs in whichever build the cluster process uses (MWIPROXY_NO_EXTENSIONS)."""

from __future__ import annotations

import socket
import subprocess
import uuid

import psycopg
import pytest

from mwiproxy.devkit.agent import AGENT_SERVICE, Agent, db_token
from mwiproxy.wire import postgres as pg
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.integration


def _marker() -> str:
    return "probe_" + uuid.uuid4().hex[:12]


def _events(topo, kind: str, marker: str) -> list[dict[str, object]]:
    return [e for e in topo.audit(kind) if marker in str(e.get("query", ""))]


def _wait_events(topo, kind: str, marker: str, n: int = 1) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []

    def enough() -> bool:
        found[:] = _events(topo, kind, marker)
        return len(found) >= n
    assert wait_for(enough), (kind, marker, found)
    return found


def test_psql_simple_query_has_a_result_summary(topo, tunnel):
    m = _marker()
    res = topo.psql(topo.dsn(tunnel), f"select g as {m} from generate_series(1, 5) g")
    assert res.returncode == 0, res.stderr
    [ev] = _wait_events(topo, "db.session.query", m)
    assert ev["rows"] == 5 and ev["command_tag"] == "SELECT 5" and ev["status"] == "ok"
    assert ev["bytes"] > 0 and ev["duration_ms"] >= 0
    assert ev["db_user"] == "alice" and ev["db_name"] == "example-db"
    assert ev["session"] and ev["query_redacted"] is False and ev["truncated"] is False


def test_non_tunnel_mode_is_audited_too(topo, passthrough, alice_out):
    m = _marker()
    with psycopg.connect(topo.dsn(passthrough, alice_out)) as conn:
        assert conn.info.pgconn.ssl_in_use  # the client's own TLS, ended at the cluster
        assert conn.execute(f"select 3 as {m}").fetchone() == (3,)
    [ev] = _wait_events(topo, "db.session.query", m)
    assert ev["rows"] == 1 and ev["status"] == "ok"


def test_agent_served_database_is_audited_at_the_cluster(topo):
    """The cluster's relay has the client's plaintext and the agent link's (the
    database's protocol): the same tap serves databases behind an agent."""
    agent = Agent(topo, "qa")
    agent.start(token=db_token(topo))
    try:
        out = topo.bot_output("qa-via-agent", service=AGENT_SERVICE)
        lp = topo.local_proxy(out, tunnel=True, service=AGENT_SERVICE)
        m = _marker()
        res = topo.psql(topo.dsn(lp), f"select 1 as {m}")
        assert res.returncode == 0, res.stderr
        [ev] = _wait_events(topo, "db.session.query", m)
        assert ev["db_service"] == AGENT_SERVICE and ev["rows"] == 1
        lp.stop()
    finally:
        agent.stop()


def test_psycopg_extended_protocol_and_hashed_parameters(topo, tunnel):
    m = _marker()
    with psycopg.connect(topo.dsn(tunnel)) as conn:
        rows = conn.execute(f"select %s::text as {m}, %s::int", ("secret-value", 7),
                            prepare=True).fetchall()
        assert rows == [("secret-value", 7)]
    [q] = _wait_events(topo, "db.session.query", m)
    assert q["rows"] == 1 and q["command_tag"] == "SELECT 1"
    params = q["parameters"]
    assert len(params) == 2 and all(p.startswith("hmac-sha256:") for p in params)
    assert "secret-value" not in str(q)
    parses = _wait_events(topo, "db.session.postgres.statements.parse", m)
    assert parses[0]["statement_name"]  # prepare=True: a named statement
    binds = [e for e in topo.audit("db.session.postgres.statements.bind")
             if e.get("statement_name") == parses[0]["statement_name"]
             and e["session"] == q["session"]]
    assert binds and binds[0]["parameters"] == params
    executes = [e for e in topo.audit("db.session.postgres.statements.execute")
                if e["session"] == q["session"]]
    assert executes


def test_psycopg_pipeline_mode_pairs_results_in_order(topo, tunnel):
    m = _marker()
    with psycopg.connect(topo.dsn(tunnel), autocommit=True) as conn:
        with conn.pipeline():
            curs = [conn.execute(f"select g as {m}_{n} from generate_series(1, %s) g", (n,))
                    for n in range(1, 6)]
        assert [len(c.fetchall()) for c in curs] == [1, 2, 3, 4, 5]
    events = _wait_events(topo, "db.session.query", m, 5)
    by_query = {str(e["query"]).split(" from ")[0]: e["rows"] for e in events}
    assert by_query == {f"select g as {m}_{n}": n for n in range(1, 6)}


def test_failing_statement_has_its_sqlstate(topo, tunnel):
    m = _marker()
    with psycopg.connect(topo.dsn(tunnel)) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute(f"select * from {m}")
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
    [ev] = _wait_events(topo, "db.session.query.failed", m)
    assert ev["sqlstate"] == "42P01" and m in str(ev["error"])
    assert ev["status"] == "error"


def test_password_is_masked_in_the_recorded_statement(topo, tunnel):
    m = _marker()
    res = topo.psql(topo.dsn(tunnel), f"/* {m} */ alter user alice password 'hunter2'")
    assert res.returncode == 0, res.stderr
    [ev] = _wait_events(topo, "db.session.query", m)
    assert ev["query_redacted"] is True and "'****'" in str(ev["query"])
    assert "hunter2" not in str(ev)


def test_pgbench_statements_are_counted(topo, tunnel):
    args = ["-h", "localhost", "-p", str(tunnel.port), "-U", "alice", "example-db"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", *args],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    before = len(topo.audit("db.session.query"))
    run = subprocess.run(["pgbench", "-n", "-t", "20", *args], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    # TPC-B: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction
    assert wait_for(lambda: len(topo.audit("db.session.query")) - before >= 20 * 7)


def test_one_megabyte_statement_is_recorded_truncated(topo, tunnel):
    m = _marker()
    big = f"select '{'x' * (1 << 20)}' as {m}"
    with psycopg.connect(topo.dsn(tunnel)) as conn:
        conn.execute("select 1")
        with conn.cursor() as cur:
            cur.execute(big.encode())  # type: ignore[call-overload]
            assert len(cur.fetchone()[0]) == 1 << 20
        assert conn.execute("select 2").fetchone() == (2,)  # the session is fine
    [ev] = [e for e in _wait_events(topo, "db.session.query", "xxxxxxxx", 1)
            if e["query_len"] == len(big)]
    assert ev["truncated"] is True and len(str(ev["query"])) == 16384
    assert ev["rows"] == 1


def test_malformed_message_closes_the_session(topo, tunnel):
    seen = len(topo.audit("db.session.malformed_packet"))
    with socket.create_connection(("127.0.0.1", tunnel.port), timeout=30) as s:
        s.sendall(pg.build_startup({"user": "alice", "database": "example-db"}))
        got = b""
        while not got.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        s.sendall(b"Q\x00\x00\x00\x02")  # a length under 4
        tail = b""
        while chunk := s.recv(65536):
            tail += chunk
    assert b"08P01" in tail and b"malformed" in tail  # told why, then closed
    assert wait_for(lambda: len(topo.audit("db.session.malformed_packet")) > seen)
    ev = topo.audit("db.session.malformed_packet")[-1]
    assert ev["reason"] == "bad message length" and ev["side"] == "client"
    ends = [e for e in topo.audit("db.session.end") if e.get("reason") == "malformed_packet"]
    assert ends
