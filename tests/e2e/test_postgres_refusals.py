"""Every refusal speaks PostgreSQL, says why, is audited, and leaves the proxy serving."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time

import psycopg
import pytest
from cryptography import x509

from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from tests._testbase.fixtures import GUIDE_ROLE
from tests.e2e.conftest import SERVICE

pytestmark = pytest.mark.integration


def _still_serving(topo, tunnel):
    assert topo.psql(topo.dsn(tunnel), "select 1").stdout.strip() == "1"


def test_wrong_user_and_wrong_database(topo, tunnel):
    res = topo.psql(topo.dsn(tunnel, user="bob"), "select 1")
    assert 'access to db denied: the certificate is for database user "alice", not "bob"' \
        in res.stderr
    res = topo.psql(topo.dsn(tunnel, dbname="postgres"), "select 1")
    assert 'the certificate is for database "example-db", not "postgres"' in res.stderr
    denied = topo.audit("db.access.denied")
    assert any(e["db_user"] == "bob" and "not \"bob\"" in e["reason"] for e in denied)
    _still_serving(topo, tunnel)


BOB_ROLE = GUIDE_ROLE.replace("example-role", "bob-role").replace("[alice]", "[bob]")


def test_roles_are_checked_at_connect_time(topo):
    """A certificate issued while the role allowed alice stops working when it no longer
    does: RBAC runs on every connection, not only at issuance."""
    out = topo.bot_output("demoted")
    lp = topo.local_proxy(out, tunnel=True)
    (topo.root / "bob-role.yaml").write_text(BOB_ROLE)
    topo.cluster.ctl("create", "-f", str(topo.root / "bob-role.yaml"))
    topo.cluster.ctl("bots", "update", "demoted", "--set-roles", "bob-role")
    res = topo.psql(topo.dsn(lp), "select 1")
    assert "FATAL:  access to db denied:" in res.stderr, res.stderr
    assert '"alice"' in res.stderr


def test_lock_cuts_a_live_session(topo):
    out = topo.bot_output("locked")
    lp = topo.local_proxy(out, tunnel=True)
    conn = psycopg.connect(topo.dsn(lp), autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    topo.cluster.ctl("lock", "--bot=locked", "--message", "incident 42")
    locked_at = time.monotonic()
    # waits for the cut itself; the bound only stops a hang (no timing assert: a loaded
    # 2-core machine is slow, and the cut is checked by what the client is told below)
    with pytest.raises(psycopg.OperationalError) as err:
        while time.monotonic() - locked_at < 60:
            conn.execute("select 1")
            time.sleep(0.05)
    # The cluster proxy's native relay says why before it closes (Relay.close(farewell)):
    # a FATAL 57P01 ErrorResponse through the tunnel's TLS, not just a dropped connection.
    assert err.value.sqlstate == "57P01", repr(err.value)
    assert "session ended: bot 'locked' is locked: incident 42" in str(err.value), err.value
    ends = [e for e in topo.audit("db.session.end") if e.get("bot") == "locked"]
    assert ends and ends[-1]["reason"] == "locked", ends
    conn.close()
    res = topo.psql(topo.dsn(lp), "select 1")
    assert "access to db denied: bot 'locked' is locked: incident 42" in res.stderr, res.stderr


def _foreign_output(topo, name):  # type: ignore[no-untyped-def]
    """Bot credentials for the right route, signed by another cluster's user CA."""
    foreign = create_authority("user", "mwiproxy.local")
    key = generate_private_key()
    ident = Identity(user="bot-example", roles=("example-role",), bot_name="example",
                     route=DatabaseRoute(SERVICE, "postgres", "alice", "example-db"))
    cert = foreign.sign_identity(ident, key.public_key(), dt.timedelta(minutes=5))
    cas = {"host": topo.host_ca.decode(), "user": foreign.cert_pem.decode(),
           "db": foreign.cert_pem.decode()}
    return topo.write_output(name, private_key_pem(key), cert_pem(cert), cas)


def test_certificate_from_another_cluster(topo, tunnel):
    out = _foreign_output(topo, "foreign")
    lp = topo.local_proxy(out, tunnel=True)
    res = topo.psql(topo.dsn(lp), "select 1")
    assert "the cluster proxy refused the connection" in res.stderr, res.stderr
    assert "alert" in res.stderr, res.stderr  # the TLS alert's reason, not a bare close
    _still_serving(topo, tunnel)


def _sleep_past_expiry(out):  # type: ignore[no-untyped-def]
    """Until the output's certificate has expired (its notAfter, plus a little)."""
    cert = x509.load_pem_x509_certificate((out / "tlscert").read_bytes())
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
    time.sleep(max(0.0, left + 0.5))


def test_expired_credentials_stop_the_tunnel_at_start(topo):
    out = topo.bot_output("shortlived", ttl="1s")
    _sleep_past_expiry(out)
    lp = topo.local_proxy(out, tunnel=True, check=False)
    assert lp.proc.wait(20) == 1
    assert "expired at" in lp.log.read_text()


def test_plain_tcp_and_garbage_to_the_cluster_port(topo, tunnel):
    host, port = topo.cluster.addr.split(":")
    res = subprocess.run(["psql", f"host={host} port={port} user=alice dbname=x sslmode=disable",
                          "-c", "select 1"], capture_output=True, text=True, timeout=30)
    assert "speaks TLS only" in res.stderr, res.stderr
    res = subprocess.run(["psql", f"host={host} port={port} user=alice dbname=x sslmode=prefer",
                          "-c", "select 1"], capture_output=True, text=True, timeout=30)
    assert "speaks TLS only" in res.stderr, res.stderr
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\x07\x07garbage garbage garbage\r\n\r\n")
        assert s.recv(100) == b""  # closed, nothing said
    _still_serving(topo, tunnel)


def test_a_certificate_expired_at_connect_is_refused_in_both_modes(topo, tunnel):
    # long enough to outlive two process starts and a query on a loaded machine; then
    # the test waits for the certificate's own expiry, not for a guessed interval
    out = topo.bot_output("expiring", ttl="15s")
    tunnel_lp = topo.local_proxy(out, tunnel=True)
    plain_lp = topo.local_proxy(out, tunnel=False)
    assert topo.psql(topo.dsn(tunnel_lp), "select 1").stdout.strip() == "1"
    _sleep_past_expiry(out)
    # tunnel mode: the local proxy checks expiry on each new connection
    res = topo.psql(topo.dsn(tunnel_lp), "select 1")
    assert "mwibot local proxy: the certificate in" in res.stderr, res.stderr
    assert "expired at" in res.stderr
    # non-tunnel mode: the client's own expired certificate fails the inner handshake.
    # The client sees the connection end (asyncio drops the TLS alert when a handshake
    # fails); the reason is in the audit log.
    res = topo.psql(topo.dsn(plain_lp, out), "select 1")
    assert res.returncode != 0 and "SSL" in res.stderr, res.stderr
    denied = topo.audit("db.access.denied")
    assert any("certificate has expired" in str(e["reason"]) for e in denied), denied[-3:]
    _still_serving(topo, tunnel)


def test_certificate_from_another_cluster_in_non_tunnel_mode(topo, passthrough, tunnel):
    out = _foreign_output(topo, "foreign-inner")
    res = topo.psql(topo.dsn(passthrough, out), "select 1")
    assert res.returncode != 0 and "SSL" in res.stderr, res.stderr
    denied = topo.audit("db.access.denied")
    assert any("client TLS handshake failed" in str(e["reason"])
               and "certificate verify failed" in str(e["reason"]) for e in denied), denied[-3:]
    _still_serving(topo, tunnel)
