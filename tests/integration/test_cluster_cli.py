"""`mwiproxy start` as a real process, driven with `mwictl`: the guide's step 1 and the
bad inputs that must be refused without touching stored state."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mwiproxy.auth.client import AuthClient, fetch_cas_pinned
from mwiproxy.auth.errors import AccessDenied, AuthError, Locked, NotFound
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import (
    create_authority,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)
from mwiproxy.identity.certs import Identity, identity_from_certificate, subject_for
from mwiproxy.identity.identityfile import read_identity_file
from tests._testbase.fixtures import GUIDE_ROLE as ROLE

pytestmark = pytest.mark.integration



def test_help_and_version(cluster):
    import subprocess
    import sys
    for mod in ("mwiproxy", "mwictl", "mwibot"):
        for flag in ("--help", "--version"):
            r = subprocess.run([sys.executable, "-m", f"mwiproxy.cli.{mod}", flag],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            assert (mod in r.stdout) if flag == "--version" else ("usage:" in r.stdout)


def test_guide_step_1(cluster, tmp_path):
    status = cluster.ctl("status").stdout
    assert "Cluster    mwiproxy.local" in status
    pin = [ln.split()[-1] for ln in status.splitlines() if ln.startswith("CA pin")][0]
    assert pin.startswith("sha256:") and len(pin) == 71
    role = tmp_path / "role.yaml"
    role.write_text(ROLE)
    assert 'role "example-role" has been created' in cluster.ctl("create", "-f", str(role)).stdout
    out = cluster.ctl("bots", "add", "example").stdout
    assert "The bot token:" in out and "expire in 60 minutes" in out and "mwibot start" in out
    cluster.ctl("bots", "update", "example", "--add-roles", "example-role")
    bots = cluster.ctl("bots", "ls").stdout
    assert "example" in bots and "example-role" in bots
    assert "example-role" in cluster.ctl("get", "roles").stdout
    got = json.loads(cluster.ctl("get", "role/example-role", "--format", "json").stdout)
    assert got["spec"]["allow"]["db_users"] == ["alice"]
    toks = cluster.ctl("tokens", "ls", "--format", "json").stdout
    assert json.loads(toks)[0]["bot_name"] == "example"
    # the admin identity written at first start is private
    ident = cluster.data_dir / "admin" / "identity"
    assert stat.S_IMODE(os.stat(ident).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cluster.data_dir).st_mode) == 0o700
    events = [json.loads(ln) for ln in cluster.ctl("audit", "--format", "json").stdout.splitlines()]
    assert [e["type"] for e in events][:4] == ["role.created", "bot.create",
                                               "join_token.create", "bot.update"]
    filtered = cluster.ctl("audit", "--type", "bot.update", "--since", "1h").stdout
    assert "bot.update" in filtered and "role.created" not in filtered


def test_tokens_locks_and_rm(cluster, tmp_path):
    (tmp_path / "r.yaml").write_text(ROLE)
    cluster.ctl("create", "-f", str(tmp_path / "r.yaml"))
    cluster.ctl("bots", "add", "b1", "--roles=example-role")
    tok = json.loads(cluster.ctl("tokens", "add", "--type=bot", "--bot-name=b1", "--ttl=5m",
                                 "--format", "json").stdout)
    assert len(tok["token"]) == 32
    cluster.ctl("tokens", "rm", tok["id"])
    assert tok["id"] not in cluster.ctl("tokens", "ls").stdout
    out = cluster.ctl("lock", "--role=example-role", "--message", "incident", "--ttl", "1h").stdout
    lock_id = out.split("ID ")[1].split()[0]
    assert "incident" in cluster.ctl("locks", "ls").stdout
    cluster.ctl("locks", "rm", lock_id)
    assert "incident" not in cluster.ctl("locks", "ls").stdout
    r = cluster.ctl("rm", "role/example-role", check=False)
    assert r.returncode == 1 and "used by bot" in r.stderr
    cluster.ctl("bots", "rm", "b1")
    cluster.ctl("rm", "role/example-role")
    assert "example-role" not in cluster.ctl("get", "roles").stdout


@pytest.mark.parametrize("text, expect", [
    ("kind: role\nversion: v6\nmetadata: [\n", "role.yaml:"),
    (ROLE.replace("db_users", "db_userz"), "role.yaml:10"),
    (ROLE.replace("'*': '*'", "env: '^[bad$'"), "role.yaml:8"),
    (ROLE.replace("kind: role", "kind: user"), "role.yaml:1"),
], ids=["garbage", "unknown-field", "bad-regex", "wrong-kind"])
def test_bad_role_files_are_refused_and_change_nothing(cluster, tmp_path, text, expect):
    f = tmp_path / "role.yaml"
    f.write_text(text)
    r = cluster.ctl("create", "-f", str(f), check=False)
    assert r.returncode == 1 and r.stderr.startswith("ERROR:") and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert cluster.ctl("get", "roles", "--format", "json").stdout.strip() == "[]"


def _client(cluster, cert_pem: bytes, key_pem: bytes) -> AuthClient:
    host_ca = (cluster.data_dir / "ca" / "host.crt").read_bytes()
    return AuthClient(cluster.addr, ca_pems=host_ca, cert_pem=cert_pem, key_pem=key_pem)


def _self_signed_admin(ca_kind: str, expired: bool = False) -> tuple[bytes, bytes]:
    ca = create_authority(ca_kind, "mwiproxy.local")
    key = generate_private_key()
    ident = Identity(user="admin", usage=(oids.USAGE_ADMIN,))
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject_for(ident)).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(7)
         .not_valid_before(now - dt.timedelta(hours=2))
         .not_valid_after(now - dt.timedelta(hours=1) if expired else now + dt.timedelta(hours=1)))
    from mwiproxy.identity.authorities import cert_pem
    return cert_pem(b.sign(ca.key, hashes.SHA256())), private_key_pem(key)


def test_forged_expired_and_foreign_certificates_are_refused(cluster):
    forged = _self_signed_admin("user")
    refused = "refused this identity's certificate"
    with pytest.raises(AccessDenied, match=refused), _client(cluster, *forged) as c:
        c.call("bots_ls")
    # an expired certificate from the real user CA
    from mwiproxy.identity.authorities import AuthoritySet, cert_pem
    cas = AuthoritySet.load_or_create(cluster.data_dir / "ca", "mwiproxy.local")
    key = generate_private_key()
    expired = cas["user"].sign_identity(Identity(user="admin", usage=(oids.USAGE_ADMIN,)),
                                        key.public_key(), dt.timedelta(seconds=-30))
    with pytest.raises(AccessDenied, match=refused), \
            _client(cluster, cert_pem(expired), private_key_pem(key)) as c:
        c.call("bots_ls")
    # a certificate from the cluster's *host* CA is not a user identity
    host_signed = cas["host"].sign_identity(Identity(user="admin", usage=(oids.USAGE_ADMIN,)),
                                            key.public_key(), dt.timedelta(hours=1))
    with pytest.raises(AccessDenied, match=refused), \
            _client(cluster, cert_pem(host_signed), private_key_pem(key)) as c:
        c.call("bots_ls")
    # and the real admin still works, nothing changed
    assert cluster.ctl("bots", "ls", "--format", "json").stdout.strip() == "[]"


def test_join_pin_reuse_and_generation_replay(cluster, tmp_path):
    (tmp_path / "r.yaml").write_text(ROLE)
    cluster.ctl("create", "-f", str(tmp_path / "r.yaml"))
    out = cluster.ctl("bots", "add", "example", "--roles=example-role").stdout
    token = out.split("The bot token: ")[1].split()[0]
    pin = cluster.ctl("status").stdout.split("CA pin")[1].split()[0]
    with pytest.raises(AuthError, match="matches none"):
        fetch_cas_pinned(cluster.addr, ["sha256:" + "0" * 64])
    cas = fetch_cas_pinned(cluster.addr, [pin])
    key = generate_private_key()
    with AuthClient(cluster.addr, ca_pems=cas["host"].encode()) as anon:
        res = anon.call("join", token=token, public_key=public_key_pem(key.public_key()).decode())
        # the same join again (its reply was lost): the same key gets its certificate again
        again = anon.call("join", token=token,
                          public_key=public_key_pem(key.public_key()).decode())
        assert again["bot"] == res["bot"]
        with pytest.raises(AccessDenied, match="already used"):  # anyone else: refused
            anon.call("join", token=token,
                      public_key=public_key_pem(generate_private_key().public_key()).decode())
        with pytest.raises(AccessDenied):
            anon.call("bots_ls")
    gen1 = res["cert"].encode()
    assert identity_from_certificate(x509.load_pem_x509_certificate(gen1)).generation == 1
    kp = private_key_pem(key)
    with _client(cluster, gen1, kp) as bot:
        k2 = generate_private_key()
        gen2 = bot.call("renew", public_key=public_key_pem(k2.public_key()).decode())
        assert gen2["generation"] == 2
        with pytest.raises(AccessDenied, match="renewed since"):  # only the current one issues
            bot.call("issue_database_cert", public_key=public_key_pem(k2.public_key()).decode(),
                     service="example-server", username="alice", database="example-db")
    with _client(cluster, gen2["cert"].encode(), private_key_pem(k2)) as bot:
        with pytest.raises(NotFound, match="not served"):
            bot.call("issue_database_cert", public_key=public_key_pem(k2.public_key()).decode(),
                     service="nope", username="alice", database="example-db")
    # replaying the generation-1 identity from "another machine"
    with _client(cluster, gen1, kp) as thief, pytest.raises(Locked):
        thief.call("renew", public_key=public_key_pem(generate_private_key().public_key()).decode())
    locks = json.loads(cluster.ctl("locks", "ls", "--format", "json").stdout)
    assert locks[0]["target"] == "example" and "stolen" in locks[0]["message"]
    audit = cluster.ctl("audit", "--type", "bot.generation_mismatch").stdout
    assert "bot.generation_mismatch" in audit and "presented=1" in audit
    bots = json.loads(cluster.ctl("bots", "ls", "--format", "json").stdout)
    assert bots[0]["generation"] == 2  # stored state intact


def test_state_survives_restart(cluster, tmp_path):
    (tmp_path / "r.yaml").write_text(ROLE)
    cluster.ctl("create", "-f", str(tmp_path / "r.yaml"))
    pin = cluster.ctl("status").stdout.split("CA pin")[1].split()[0]
    cluster.stop()
    cluster.start()
    assert pin in cluster.ctl("status").stdout
    assert "example-role" in cluster.ctl("get", "roles").stdout
    ident = read_identity_file(str(cluster.data_dir / "admin" / "identity"))
    assert identity_from_certificate(ident.certificate).is_admin


def test_db_agent_token_register_and_listing(cluster):
    out = cluster.ctl("tokens", "add", "--type=db", "--ttl=5m").stdout
    token = out.split("The invite token: ")[1].split()[0]
    pin = cluster.ctl("status").stdout.split("CA pin")[1].split()[0]
    assert (f"mwiproxy start --roles=db --auth-server={cluster.addr} --token={token} "
            f"--ca-pin={pin} -c db.yaml") in out
    r = cluster.ctl("tokens", "add", "--type=bot", check=False)
    assert r.returncode == 1 and "--bot-name" in r.stderr
    assert json.loads(cluster.ctl("agents", "ls", "--format", "json").stdout) == []
    # an agent joins over the wire with the token, then heartbeats one database
    cas = fetch_cas_pinned(cluster.addr, [pin])
    key = generate_private_key()
    with AuthClient(cluster.addr, ca_pems=cas["host"].encode()) as anon:
        res = anon.call("agent_join", token=token, hostname="db-node-1",
                        public_key=public_key_pem(key.public_key()).decode())
    with _client(cluster, res["cert"].encode(), private_key_pem(key)) as agent:
        beat = agent.call("agent_heartbeat", addr="127.0.0.1:3081", hostname="db-node-1",
                          ttl=60, databases=[{"name": "agent-pg", "protocol": "postgres",
                                              "uri": "127.0.0.1:5432", "labels": {"env": "dev"}}])
        assert beat["accepted"] == ["agent-pg"]
        with pytest.raises(AccessDenied):
            agent.call("bots_ls")
    agents = cluster.ctl("agents", "ls").stdout
    assert res["host_id"] in agents and "db-node-1" in agents and "agent-pg" in agents
    db_ls = cluster.ctl("db", "ls").stdout.splitlines()
    assert db_ls[0].split() == ["Name", "Protocol", "URI", "Labels", "Agent"]
    assert db_ls[2].split() == ["agent-pg", "postgres", "127.0.0.1:5432", "env=dev", "db-node-1"]
    assert "Agents     1" in cluster.ctl("status").stdout
    got = json.loads(cluster.ctl("get", "db", "--format", "json").stdout)
    assert got[0]["agents"] == ["db-node-1"]
    with _client(cluster, res["cert"].encode(), private_key_pem(key)) as agent:
        agent.call("agent_goodbye")
    assert "agent-pg" not in cluster.ctl("db", "ls").stdout
    events = cluster.ctl("audit", "--type", "agent.register", "--type", "agent.goodbye").stdout
    assert "agent.register" in events and "agent.goodbye" in events


def test_garbage_cluster_config_names_file_line_key(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("cluster_name: x\nproxy:\n  listen_adr: 127.0.0.1:1\n")
    r = subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{cfg}:3" in r.stderr and "listen_adr" in r.stderr and "Traceback" not in r.stderr


def test_get_role_shows_query_audit_options(cluster, tmp_path):
    text = (ROLE.replace("example-role", "quiet-role")
            + "  options:\n    query_audit: false\n    query_audit_parameters: omit\n")
    (tmp_path / "quiet.yaml").write_text(text)
    cluster.ctl("create", "-f", str(tmp_path / "quiet.yaml"))
    shown = cluster.ctl("get", "role/quiet-role").stdout
    assert "query_audit: false" in shown and "query_audit_parameters: omit" in shown
    got = json.loads(cluster.ctl("get", "role/quiet-role", "--format", "json").stdout)
    assert got["spec"]["options"] == {"query_audit": False, "query_audit_parameters": "omit"}
    (tmp_path / "bad.yaml").write_text(text.replace("omit", "all"))
    bad = cluster.ctl("create", "-f", str(tmp_path / "bad.yaml"), check=False)
    assert bad.returncode == 1
    assert "bad.yaml:16: spec.options.query_audit_parameters" in bad.stderr
    cluster.ctl("rm", "role/quiet-role")
