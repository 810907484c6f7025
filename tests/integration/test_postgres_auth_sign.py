"""`mwictl auth sign --format=db` output configures a real PostgreSQL for certificate
auth; it accepts a client certificate for `alice` from the database-client CA (what an
engine presents) and refuses one from any other CA."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from mwiproxy.identity.authorities import (
    AuthoritySet,
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
    write_private,
)
from tests._testbase import postgres

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not postgres.available(), reason="PostgreSQL 15 not installed")]


@pytest.fixture
def pg(cluster, tmp_path):
    out = tmp_path / "server"
    cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={out}",
                "--ttl=24h")
    server = postgres.PostgresServer(
        ssl_files=(f"{out}.crt", f"{out}.key", f"{out}.cas"),
        hba=["local all all trust", "hostssl all all 127.0.0.1/32 cert"],
    ).start()
    server.psql("CREATE USER alice")
    server.psql('CREATE DATABASE "example-db" OWNER alice')
    yield server
    server.stop()


def _client_files(tmp_path, ca, user: str) -> tuple[str, str]:
    key = generate_private_key()
    cert = ca.sign_database_user(user, key.public_key(), dt.timedelta(minutes=5))
    tag = format(ca.cert.serial_number, "x")[:12]
    c, k = tmp_path / f"{user}-{tag}.crt", tmp_path / f"{user}-{tag}.key"
    c.write_bytes(cert_pem(cert))
    write_private(k, private_key_pem(key))
    return str(c), str(k)


def _connect(pg, cert: str, key: str, root: str, user: str = "alice"):
    return psycopg.connect(host="localhost", port=pg.port, user=user, dbname="example-db",
                           sslmode="verify-full", sslcert=cert, sslkey=key, sslrootcert=root,
                           connect_timeout=10)


def test_postgres_accepts_db_client_ca_and_refuses_others(cluster, pg, tmp_path):
    cas = AuthoritySet.load_or_create(cluster.data_dir / "ca", "mwiproxy.local")
    db_ca = str(cluster.data_dir / "ca" / "db.crt")  # verifies the server certificate
    # what an engine presents: CN=alice from the database-client CA
    cert, key = _client_files(tmp_path, cas["db_client"], "alice")
    with _connect(pg, cert, key, db_ca) as conn:
        assert conn.execute("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == ("alice", True)
    # the same CN from a CA PostgreSQL was not told to trust
    other = create_authority("db_client", "mwiproxy.local")
    cert2, key2 = _client_files(tmp_path, other, "alice")
    with pytest.raises(psycopg.OperationalError):
        _connect(pg, cert2, key2, db_ca)
    # a certificate from the cluster's user CA is not for databases either
    cert3, key3 = _client_files(tmp_path, cas["user"], "alice")
    with pytest.raises(psycopg.OperationalError):
        _connect(pg, cert3, key3, db_ca)
    # a valid certificate for alice does not let you in as someone else
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        _connect(pg, cert, key, db_ca, user="postgres")
