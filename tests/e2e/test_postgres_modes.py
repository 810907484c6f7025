"""The guide's steps 3–4 against a real PostgreSQL, in both local proxy modes."""

from __future__ import annotations

import json
import re
import subprocess

import psycopg
import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.integration

WHO = "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()"


def test_tunnel_mode_psql_and_psycopg(topo, tunnel):
    res = topo.psql(topo.dsn(tunnel), WHO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice|example-db|t"  # the upstream hop is TLS
    with psycopg.connect(topo.dsn(tunnel)) as conn:
        assert conn.execute(WHO).fetchone() == ("alice", "example-db", True)
        assert conn.execute("select sum(g) from generate_series(1, 100000) g").fetchone() == (
            5000050000,)


def test_non_tunnel_mode_clients_bring_their_own_tls(topo, passthrough, alice_out):
    dsn = topo.dsn(passthrough, alice_out)
    res = topo.psql(dsn, WHO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice|example-db|t"
    with psycopg.connect(dsn) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute(WHO).fetchone() == ("alice", "example-db", True)


def test_non_tunnel_mode_is_relayed_natively(topo, passthrough, alice_out):
    """The client's own TLS inside the local proxy's TLS is terminated in the native core
    (TLSStream.wrap_inner), so the session leaves Python like in tunnel mode."""
    seen = len(topo.audit("db.session.end"))
    res = topo.psql(topo.dsn(passthrough, alice_out), "select 7")
    assert res.stdout.strip() == "7", res.stderr
    assert wait_for(lambda: len(topo.audit("db.session.end")) > seen)
    new = topo.audit("db.session.end")[seen:]
    assert new and all(e["native"] is True for e in new), new
    assert new[-1]["bytes_client_to_db"] > 0 and new[-1]["bytes_db_to_client"] > 0


def test_non_tunnel_mode_without_client_certificate_is_refused(topo, passthrough, alice_out):
    dsn = topo.dsn(passthrough, alice_out, sslcert="/dev/null/none", sslkey="/dev/null/none")
    res = topo.psql(dsn, "select 1")
    assert res.returncode != 0
    assert "no client certificate was presented" in res.stderr


def test_sessions_are_audited_with_bytes_and_duration(topo, tunnel):
    res = topo.psql(topo.dsn(tunnel, application_name="audit-probe"), "select 42")
    assert res.stdout.strip() == "42", res.stderr
    starts = topo.audit("db.session.start")
    assert any(e["db_user"] == "alice" and e["success"] for e in starts)
    ends = [e for e in topo.audit("db.session.end") if e["bot"] == "example"]
    assert ends and all(e["db_service"] == "example-server" for e in ends)
    last = ends[-1]
    assert last["bytes_client_to_db"] > 0 and last["bytes_db_to_client"] > 0
    assert last["duration"] >= 0
    # one restart-unique id ties the session's start to its end
    assert len(last["session"]) == 32
    assert [e["session_id"] for e in starts if e["session"] == last["session"]] == \
        [last["session_id"]]


def test_pgbench_in_tunnel_mode_has_no_failures(topo, tunnel):
    env_args = ["-h", "localhost", "-p", str(tunnel.port), "-U", "alice", "example-db"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", *env_args],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run(["pgbench", "-n", "-c", "4", "-t", "200", *env_args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "number of transactions actually processed: 800/800" in run.stdout
    failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert failed is None or failed.group(1) == "0"


def test_tunnel_on_a_unix_socket(topo, alice_out):
    sock_dir = topo.root / "sockets" / "pg"
    lp = topo.local_proxy(alice_out, tunnel=True, listen=f"unix://{sock_dir}/.s.PGSQL.5432")
    assert oct(sock_dir.stat().st_mode & 0o777) == "0o700"
    res = topo.psql(f"host={sock_dir} port=5432 user=alice dbname=example-db", WHO)
    assert res.stdout.strip() == "alice|example-db|t", res.stderr
    lp.stop()


def test_a_psql_session_is_read_back_by_its_session_id(topo, tunnel):
    """`mwictl sessions show ID` and `mwictl audit --session ID` find a real session's
    start and end under the id its events carry."""
    seen = len(topo.audit("db.session.end"))
    res = topo.psql(topo.dsn(tunnel), "select 42")
    assert res.stdout.strip() == "42", res.stderr
    assert wait_for(lambda: len(topo.audit("db.session.end")) > seen)
    end = topo.audit("db.session.end")[-1]
    sid = str(end["session"])
    shape = json.loads(topo.cluster.ctl("sessions", "show", sid, "--format", "json").stdout)
    assert shape["session"] == sid
    assert shape["start"]["success"] is True and shape["start"]["db_user"] == "alice"
    assert shape["end"]["id"] == end["id"] and shape["end"]["bytes_db_to_client"] > 0
    text = topo.cluster.ctl("sessions", "show", sid).stdout.splitlines()
    assert text[0].startswith(f"Session {sid}  bot example") and "alice@example-db" in text[0]
    assert text[1].startswith("Started ") and text[-1].startswith("Ended ")
    lines = topo.cluster.ctl("audit", "--session", sid, "--format", "json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events][0] == "db.session.start"
    assert events[-1]["type"] == "db.session.end" and {e["session"] for e in events} == {sid}
    other = topo.cluster.ctl("sessions", "show", "0" * 32, check=False)
    assert other.returncode == 1 and "no audit events for session" in other.stderr
