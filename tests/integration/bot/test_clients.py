"""The files the bot writes, used by real clients: psycopg (default format) and psql
(cockroach/) against a real PostgreSQL trusting the cluster's user CA, Python `ssl` with
tls.crt/tls.key/tls.cas against a server signed by the host CA, and pymongo's options."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from mwiproxy.identity.authorities import (
    AuthoritySet,
    cert_pem,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.tlsctx import server_context
from tests._testbase import postgres
from tests._testbase.ports import free_port
from tests.integration.bot.botkit import BotEnv, mwibot, start_env

pytestmark = pytest.mark.integration


def oneshot(env: BotEnv, services: list[dict]) -> None:
    res = mwibot("start", "-c", str(env.config(services)), "--oneshot")
    assert res.returncode == 0, res.stderr


@pytest.fixture
def pg_env(tmp_path):
    """PostgreSQL (cert auth, server cert from `mwictl auth sign --format=db`) served by
    the cluster as example-server."""
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    pg = postgres.PostgresServer(hba=["local all all trust", "hostssl all all 127.0.0.1/32 cert"])
    env = start_env(tmp_path, db_uri=f"127.0.0.1:{pg.port}")
    try:
        out = tmp_path / "server"
        env.cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1",
                        f"--out={out}", "--ttl=24h")
        pg.ssl_files = (f"{out}.crt", f"{out}.key", f"{out}.cas")
        pg.start()
        pg.psql("CREATE USER alice")
        pg.psql('CREATE DATABASE "example-db" OWNER alice')
        yield env, pg
    finally:
        env.cluster.stop()
        pg.stop()


def local_proxy(env: BotEnv, out: Path, stack: contextlib.ExitStack) -> int:
    """`mwibot proxy` (non-tunnel: the client's own TLS and certificate go through)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mwiproxy.cli.mwibot", "proxy", f"--proxy={env.cluster.addr}",
         f"--destination-dir={out}", "db", f"--port={port}", "example-server"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack.callback(_stop, proc)
    line = proc.stdout.readline() if proc.stdout else ""
    assert "listening on" in line, line
    return port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)


def test_psycopg_and_psql_with_the_bot_files(pg_env):
    """The bot's database certificate carries the route in custom subject OIDs, which
    PostgreSQL >= 14 refuses to print as a DN ("could not get NID for ASN1_OBJECT"), so
    the files are used as Teleport users use them: through the proxy, whose engine shows
    PostgreSQL its own database-client certificate."""
    env, _ = pg_env
    oneshot(env, [env.db_service("pg"), env.db_service("crdb", "cockroach")])
    d, c = env.root / "pg", env.root / "crdb"
    with contextlib.ExitStack() as stack:
        port = local_proxy(env, d, stack)
        with psycopg.connect(host="localhost", port=port, user="alice", dbname="example-db",
                             sslmode="verify-full", sslcert=str(d / "tlscert"),
                             sslkey=str(d / "key"),
                             sslrootcert=str(d / "teleport-host-ca.crt"),
                             connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("alice",)
        port = local_proxy(env, c, stack)
        roach = c / "cockroach"
        dsn = (f"host=localhost port={port} user=alice dbname=example-db sslmode=verify-ca "
               f"sslcert={roach / 'node.crt'} sslkey={roach / 'node.key'} "
               f"sslrootcert={c / 'teleport-host-ca.crt'} connect_timeout=10")
        res = subprocess.run([str(postgres.PG_BIN / "psql"), dsn, "-Atc", "SELECT current_user"],
                             capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice"


def _serve_once(ctx: ssl.SSLContext, listener: socket.socket, seen: list[str]) -> None:
    conn, _ = listener.accept()
    with ctx.wrap_socket(conn, server_side=True) as tls:
        subject = dict(x[0] for x in tls.getpeercert()["subject"])
        seen.append(subject["commonName"])
        tls.sendall(b"hello " + subject["commonName"].encode())


def test_python_ssl_with_the_tls_format(env: BotEnv):
    oneshot(env, [env.db_service("tls", "tls")])
    cas = AuthoritySet.load_or_create(env.cluster.data_dir / "ca", "mwiproxy.local")
    key = generate_private_key()
    cert = cas["host"].sign_server("localhost", ["localhost"], key.public_key(),
                                   dt.timedelta(minutes=5))
    ctx = server_context(cert_pem(cert), private_key_pem(key), cas["user"].cert_pem,
                         client_cert="required")
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve_once, args=(ctx, listener, seen))
        server.start()
        d = env.root / "tls"
        client = ssl.create_default_context(cafile=str(d / "tls.cas"))
        client.load_cert_chain(str(d / "tls.crt"), str(d / "tls.key"))
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(100) == b"hello bot-example"
        server.join(10)
    assert seen == ["bot-example"]


def test_pymongo_accepts_the_mongo_format(env: BotEnv):
    pymongo = pytest.importorskip("pymongo")
    from pymongo.errors import ConfigurationError

    oneshot(env, [env.db_service("mongo", "mongo")])
    d = env.root / "mongo"

    def client(cert: Path, ca: Path):
        return pymongo.MongoClient("mongodb://localhost:27017/", tls=True,
                                   tlsCertificateKeyFile=str(cert), tlsCAFile=str(ca),
                                   connect=False, serverSelectionTimeoutMS=100)

    c = client(d / "mongo.crt", d / "mongo.cas")  # cert + key in one file, the database CA
    c.close()
    with pytest.raises(ConfigurationError):  # control: a certificate without its key
        client(d / "tlscert", d / "mongo.cas")
