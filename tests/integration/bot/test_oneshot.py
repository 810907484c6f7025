"""`mwibot start --oneshot` against a real cluster: the files of every format, name for
name with their modes; the stored identity reused on restart; clear failures."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509

from mwiproxy.bot.credentials import Credentials
from mwiproxy.identity.certs import identity_from_certificate
from mwiproxy.identity.identityfile import read_identity_file
from tests._testbase.ports import free_port
from tests.integration.bot.botkit import BotEnv, file_mode, mwibot, wait_until

pytestmark = pytest.mark.integration

COMMON = {".write-test", "key", "tlscert", "teleport-host-ca.crt", "teleport-user-ca.crt",
          "teleport-database-ca.crt", "identity"}
EXTRA = {
    "": set(),
    "tls": {"tls.crt", "tls.key", "tls.cas"},
    "mongo": {"mongo.crt", "mongo.cas"},
    "cockroach": {"cockroach/node.crt", "cockroach/node.key", "cockroach/ca.crt"},
}


def published(dest: Path) -> set[str]:
    """Every name a client sees in the destination (mwibot's .bundles excluded)."""
    names = set()
    for top, dirs, files in os.walk(dest):
        dirs[:] = [d for d in dirs if d != ".bundles"]
        rel = os.path.relpath(top, dest)
        names |= {f if rel == "." else f"{rel}/{f}" for f in files}
    return names


def read(dest: Path, name: str) -> bytes:
    return (dest / name).read_bytes()


def oneshot(env: BotEnv, config: Path, *extra: str):
    return mwibot("start", "-c", str(config), "--oneshot", *extra)


def test_join_writes_every_format_name_for_name(env: BotEnv):
    services = [env.db_service(f"db-{fmt or 'default'}", fmt) for fmt in EXTRA]
    services.append({"type": "identity", "name": "me", "destination": str(env.root / "me")})
    res = oneshot(env, env.config(services))
    assert res.returncode == 0, res.stderr
    ca_dir = env.cluster.data_dir / "ca"
    host, user, db = (read(ca_dir, f"{k}.crt") for k in ("host", "user", "db"))
    for fmt, extra in EXTRA.items():
        dest = env.root / f"db-{fmt or 'default'}"
        assert published(dest) == COMMON | extra, fmt
        assert file_mode(dest) == 0o700
        for name in COMMON | extra:
            assert file_mode(dest / name) == 0o600, (fmt, name)
        creds = Credentials(read(dest, "key"), read(dest, "tlscert"))
        assert creds.key_matches_certificate()
        ident = identity_from_certificate(creds.certificate)
        assert ident.user == "bot-example" and ident.route is not None
        assert (ident.route.service, ident.route.database, ident.route.username) == (
            "example-server", "example-db", "alice")
        assert (read(dest, "teleport-host-ca.crt"), read(dest, "teleport-user-ca.crt"),
                read(dest, "teleport-database-ca.crt")) == (host, user, db)
        assert read_identity_file(str(dest / "identity")).cert_pem == creds.cert_pem
    tls = env.root / "db-tls"
    assert (read(tls, "tls.crt"), read(tls, "tls.key"), read(tls, "tls.cas")) == (
        read(tls, "tlscert"), read(tls, "key"), host)
    mongo = env.root / "db-mongo"
    assert read(mongo, "mongo.crt") == read(mongo, "tlscert") + read(mongo, "key")
    assert read(mongo, "mongo.cas") == db
    roach = env.root / "db-cockroach"
    assert file_mode(roach / "cockroach") == 0o700
    assert read(roach, "cockroach/ca.crt") == db + host
    assert read(roach, "cockroach/node.key") == read(roach, "key")
    me = env.root / "me"
    assert published(me) == COMMON
    bot = identity_from_certificate(x509.load_pem_x509_certificate(read(me, "tlscert")))
    assert bot.bot_name == "example" and bot.renewable and bot.generation == 1
    assert "joined the cluster" in res.stderr and "bot generation 1" in res.stderr


def test_restart_reuses_the_stored_identity(env: BotEnv):
    config = env.config([env.db_service("out")])
    assert oneshot(env, config).returncode == 0
    assert env.generation() == 1
    again = oneshot(env, config)
    assert again.returncode == 0, again.stderr
    assert "using the bot identity stored in" in again.stderr
    assert env.generation() == 2
    assert len(env.audit("bot.join")) == 1
    # the token is spent: without the stored identity the bot cannot join again
    shutil.rmtree(env.root / "storage")
    res = oneshot(env, config)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("ERROR: join refused")


def test_expired_identity_needs_a_new_token(env: BotEnv):
    config = env.config([env.db_service("out")], credential_ttl="2s", renewal_interval="1s")
    assert oneshot(env, config).returncode == 0
    store = env.root / "storage" / "tlscert"
    expires = x509.load_pem_x509_certificate(store.read_bytes()).not_valid_after_utc
    wait_until(lambda: dt.datetime.now(dt.UTC) > expires, 10, "the bot identity to expire")
    res = oneshot(env, config)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: the bot identity stored in") and "new join token" in last
    env.new_token()
    res = oneshot(env, env.config([env.db_service("out")]))
    assert res.returncode == 0, res.stderr
    assert "onboarding.token changed: joining again" in res.stderr
    assert len(env.audit("bot.join")) == 2


@pytest.mark.parametrize("case", ["unreachable", "wrong-pin", "denied-user", "bad-token"])
def test_oneshot_failures_exit_1_with_one_clear_line(env: BotEnv, case: str):
    services = [env.db_service("out")]
    top: dict[str, object] = {}
    if case == "unreachable":
        top["proxy_server"] = f"127.0.0.1:{free_port()}"
    config = env.config(services, **top)
    text = config.read_text()
    if case == "wrong-pin":
        text = text.replace(env.pin, "sha256:" + "ab" * 32)
    if case == "bad-token":
        text = text.replace(env.tokens[-1], "not-a-token")
    if case == "denied-user":
        text = text.replace("username: alice", "username: bob")
    config.write_text(text)
    res = oneshot(env, config)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, res.stderr
    expected = {"unreachable": "cannot reach the cluster",
                "wrong-pin": "matches none of the configured ca_pins",
                "denied-user": "bob",
                "bad-token": "join refused"}[case]
    assert expected in errors[0]
    if case == "denied-user":  # the bot joined; only the output failed
        assert not (env.root / "out" / "tlscert").exists()
