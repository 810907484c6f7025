"""Database agents in-process: db join tokens, agent certificates, heartbeats and their
expiry, locks, db_client certificates, who may call what, RBAC on agent-served databases."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mwiproxy.auth import audit
from mwiproxy.auth.agents import MAX_HEARTBEAT_TTL, MIN_HEARTBEAT_TTL
from mwiproxy.auth.errors import AccessDenied, BadRequest, Locked, NotFound
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.config.cluster import AuthConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import (
    generate_private_key,
    load_public_key,
    public_key_pem,
)
from mwiproxy.identity.certs import Identity, identity_from_certificate
from tests._testbase.authkit import Clock, make_service
from tests._testbase.fixtures import GUIDE_ROLE as ROLE

ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,))
CLUSTER = "example.local"
PG = {"name": "agent-pg", "protocol": "postgres", "uri": "10.0.0.5:5432",
      "labels": {"env": "dev"}, "description": "served by an agent"}


def _make(tmp_path, clock: Clock) -> tuple[AuthService, SQLiteStorage]:
    s = make_service(tmp_path, clock)
    return s, s.storage  # type: ignore[return-value]




def _key():
    return generate_private_key()


def _pem(key) -> str:
    return public_key_pem(key.public_key()).decode()


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _ident(pem: str) -> Identity:
    return identity_from_certificate(_cert(pem))


def _db_token(svc) -> str:
    res = svc.call("tokens_add", ADMIN, {"type": "db", "ttl": "10m"})
    assert res["type"] == "db" and res["bot_name"] == ""
    return res["token"]


def _join_agent(svc, **params) -> tuple[dict, Identity]:
    res = svc.call("agent_join", None, {"token": _db_token(svc), "public_key": _pem(_key()),
                                        "hostname": "db-node-1", **params})
    return res, _ident(res["cert"])


def _bot(svc, roles=("example-role",)) -> Identity:
    tok = svc.call("bots_add", ADMIN, {"name": "example", "roles": list(roles)})["token"]
    return _ident(svc.call("join", None, {"token": tok, "public_key": _pem(_key())})["cert"])


def _beat(svc, agent: Identity, dbs=(PG,), **kw) -> dict:
    params = {"addr": "10.0.0.5:3090", "hostname": "db-node-1", "databases": list(dbs), **kw}
    return svc.call("agent_heartbeat", agent, params)


# ---- join and renew -------------------------------------------------------------------

def test_join_with_db_token_gives_agent_identity_and_agent_ca_server_cert(svc):
    key = _key()
    res = svc.call("agent_join", None, {
        "token": _db_token(svc), "public_key": _pem(key), "hostname": "db-node-1",
        "hosts": ["db1.internal", "10.0.0.5"], "ttl": "2h"})
    ident, server = _ident(res["cert"]), _cert(res["server_cert"])
    host_id = res["host_id"]
    assert ident.user == f"agent.{host_id}" and ident.roles == ("Db",)
    assert ident.usage == (oids.USAGE_AGENT,) and ident.renewable and not ident.is_bot
    assert ident.cluster == CLUSTER and not ident.is_admin
    _cert(res["cert"]).verify_directly_issued_by(svc.cas["user"].cert)
    server.verify_directly_issued_by(svc.cas["agent"].cert)
    # never from the host CA: clients trust that to name the cluster proxy
    with pytest.raises(ValueError):
        server.verify_directly_issued_by(svc.cas["host"].cert)
    cn = server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "db1.internal"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db1.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    # one key for both certificates
    assert server.public_key() == key.public_key() == _cert(res["cert"]).public_key()
    assert res["expires"] == _cert(res["cert"]).not_valid_after_utc.timestamp()
    left = _cert(res["cert"]).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=58) < left <= dt.timedelta(hours=2)
    assert res["cas"]["host"] == svc.cas["host"].cert_pem.decode()
    joined = svc.audit.query(types=[audit.AGENT_JOIN])
    assert [e.fields["host_id"] for e in joined] == [host_id]
    assert joined[0].fields["hostname"] == "db-node-1"


def test_join_default_hosts_and_ttl_limits(svc):
    res, ident = _join_agent(svc)
    san = _cert(res["server_cert"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ident.expires is not None
    left = ident.expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23, minutes=58) < left <= dt.timedelta(hours=24)
    res, ident = _join_agent(svc, ttl="720h")  # 30 days asked: the cluster's maximum given
    assert ident.expires is not None
    left = ident.expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23, minutes=58) < left <= dt.timedelta(hours=24)
    svc.limits = AuthConfig(max_certificate_ttl=dt.timedelta(days=7))
    res, ident = _join_agent(svc, ttl="720h")  # auth.max_certificate_ttl: 168h
    assert ident.expires is not None
    left = ident.expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < left <= dt.timedelta(days=7)


def test_db_token_is_one_time_and_expires(svc, clock):
    tok = _db_token(svc)
    svc.call("agent_join", None, {"token": tok, "public_key": _pem(_key())})
    with pytest.raises(AccessDenied, match="already used"):
        svc.call("agent_join", None, {"token": tok, "public_key": _pem(_key())})
    late = _db_token(svc)
    clock.now += 601
    with pytest.raises(AccessDenied, match="expired"):
        svc.call("agent_join", None, {"token": late, "public_key": _pem(_key())})
    with pytest.raises(AccessDenied, match="not known"):
        svc.call("agent_join", None, {"token": "f" * 32, "public_key": _pem(_key())})
    assert len(svc.audit.query(types=[audit.AGENT_JOIN_FAILED])) == 3


def test_token_kinds_do_not_cross(svc):
    svc.call("bots_add", ADMIN, {"name": "example", "roles": []})
    bot_tok = svc.call("tokens_add", ADMIN, {"type": "bot", "bot_name": "example"})
    assert bot_tok["type"] == "bot"
    with pytest.raises(AccessDenied, match="--type=db"):
        svc.call("agent_join", None, {"token": bot_tok["token"], "public_key": _pem(_key())})
    db_tok = _db_token(svc)
    with pytest.raises(AccessDenied, match="--type=bot"):
        svc.call("join", None, {"token": db_tok, "public_key": _pem(_key())})
    # neither refusal used the token up: each still works for its own kind
    assert svc.call("join", None, {"token": bot_tok["token"], "public_key": _pem(_key())})
    assert svc.call("agent_join", None, {"token": db_tok, "public_key": _pem(_key())})
    with pytest.raises(BadRequest, match="use bot or db"):
        svc.call("tokens_add", ADMIN, {"type": "node"})
    kinds = {t["type"] for t in svc.call("tokens_ls", ADMIN, {})}
    assert kinds == {"bot", "db"}


def test_join_refuses_bad_hosts_without_using_the_token(svc):
    tok = _db_token(svc)
    for hosts in (["bad host!"], [CLUSTER], ["x"] * 33):
        with pytest.raises(BadRequest):
            svc.call("agent_join", None, {"token": tok, "public_key": _pem(_key()),
                                          "hosts": hosts})
    assert svc.call("agent_join", None, {"token": tok, "public_key": _pem(_key())})


def test_renew_keeps_host_id_and_survives_restart(tmp_path, clock):
    s, storage = _make(tmp_path, clock)
    res, agent = _join_agent(s)
    k2 = _key()
    renewed = s.call("agent_renew", agent, {"public_key": _pem(k2), "hosts": ["db2.internal"]})
    assert renewed["host_id"] == res["host_id"]
    assert _ident(renewed["cert"]).user == agent.user
    assert _cert(renewed["server_cert"]).public_key() == k2.public_key()
    assert svc_events(s, audit.AGENT_RENEW) == [res["host_id"]]
    s.audit.close()
    storage.close()
    # a cluster restart: new service, same storage and CAs
    s2, storage2 = _make(tmp_path, clock)
    again = s2.call("agent_renew", _ident(renewed["cert"]), {"public_key": _pem(_key())})
    assert again["host_id"] == res["host_id"]
    assert [_ident(c["cert"]).generation for c in (res, renewed, again)] == [1, 2, 3]
    storage2.close()


def test_a_copied_agent_identity_renewing_locks_the_agent(svc):
    """Two holders of one agent identity: the one presenting an older generation is
    refused, the agent is locked (heartbeats too), and the audit log says why."""
    res, agent = _join_agent(svc)
    renewed = svc.call("agent_renew", agent, {"public_key": _pem(_key())})
    with pytest.raises(Locked, match="generation mismatch"):
        svc.call("agent_renew", agent, {"public_key": _pem(_key())})  # the stale copy
    [event] = svc.audit.query(types=[audit.AGENT_GENERATION_MISMATCH])
    assert (event.fields["presented"], event.fields["expected"]) == (1, 2)
    with pytest.raises(AccessDenied, match="locked"):
        _beat(svc, _ident(renewed["cert"]))


def svc_events(svc, kind: str) -> list[str]:
    return [e.fields["host_id"] for e in svc.audit.query(types=[kind])]


def test_renew_and_heartbeat_need_a_joined_agent(svc):
    key = _key()
    ghost = Identity(user="agent.00000000-0000-0000-0000-000000000000", roles=("Db",),
                     usage=(oids.USAGE_AGENT,), renewable=True, cluster=CLUSTER)
    with pytest.raises(AccessDenied, match="has not joined"):
        svc.call("agent_renew", ghost, {"public_key": _pem(key)})
    with pytest.raises(AccessDenied, match="has not joined"):
        _beat(svc, ghost)
    # agent usage, but not an agent's user name
    odd = Identity(user="admin", usage=(oids.USAGE_AGENT,))
    with pytest.raises(AccessDenied, match="agent identity"):
        _beat(svc, odd)


# ---- heartbeats -----------------------------------------------------------------------

def test_heartbeat_registers_databases_and_routes_them(svc):
    _, agent = _join_agent(svc)
    res = _beat(svc, agent, ttl=30)
    assert res["accepted"] == ["agent-pg"] and res["rejected"] == {}
    assert res["expires"] == svc.clock() + 30
    db = svc.database("agent-pg")
    assert (db.protocol, db.uri, db.static_labels) == ("postgres", "10.0.0.5:5432",
                                                       {"env": "dev"})
    listed = {d["name"]: d for d in svc.call("db_ls", ADMIN, {})}
    assert listed["agent-pg"]["agents"] == ["db-node-1"]
    assert listed["agent-pg"]["description"] == "served by an agent"
    assert listed["example-server"]["agents"] == []
    [(rec, served)] = svc.agents.servers_for("agent-pg")
    assert rec.addr == "10.0.0.5:3090" and served.name == "agent-pg"
    ls = svc.call("agents_ls", ADMIN, {})
    assert [(a["hostname"], a["addr"], a["databases"]) for a in ls] == [
        ("db-node-1", "10.0.0.5:3090", ["agent-pg"])]
    assert svc.call("status", ADMIN, {})["agents"] == 1
    # a repeat heartbeat with the same set is not audited again; a change is
    _beat(svc, agent)
    assert len(svc.audit.query(types=[audit.AGENT_REGISTER])) == 1
    _beat(svc, agent, dbs=[PG, {**PG, "name": "agent-pg-2"}])
    reg = svc.audit.query(types=[audit.AGENT_REGISTER])
    assert [e.fields["databases"] for e in reg] == [["agent-pg"], ["agent-pg", "agent-pg-2"]]


@pytest.mark.parametrize("entry, reason", [
    ({**PG, "name": "Bad Name"}, "not a valid name"),
    ({**PG, "protocol": "oracle"}, "not one of"),
    ({**PG, "uri": "10.0.0.5"}, "host:port"),
    ({**PG, "uri": "10.0.0.5:0"}, "port must be"),
    ({**PG, "labels": {"env": 1}}, "labels"),
    ({**PG, "tls": {"mode": "insecure"}}, "unknown key"),
    ({**PG, "name": "example-server"}, "cluster's own config"),
], ids=["name", "protocol", "no-port", "port-0", "labels", "unknown-key", "static-name"])
def test_heartbeat_rejects_bad_entries_and_keeps_good_ones(svc, entry, reason):
    _, agent = _join_agent(svc)
    good = {**PG, "name": "good-db"}
    res = _beat(svc, agent, dbs=[entry, good])
    assert res["accepted"] == ["good-db"]
    [(name, why)] = res["rejected"].items()
    assert reason in why
    if entry.get("name") == "example-server":  # the static one is untouched
        assert svc.database("example-server").uri == "localhost:5432"
    names = [d["name"] for d in svc.call("db_ls", ADMIN, {})]
    assert names.count("good-db") == 1 and "Bad Name" not in names


def test_several_agents_may_serve_one_database_with_one_protocol(svc):
    _, a1 = _join_agent(svc)
    _, a2 = _join_agent(svc, hostname="db-node-2")
    _beat(svc, a1)
    res = _beat(svc, a2, hostname="db-node-2", addr="10.0.0.6:3090")
    assert res["accepted"] == ["agent-pg"]
    assert [r.addr for r, _ in svc.agents.servers_for("agent-pg")] == [
        "10.0.0.5:3090", "10.0.0.6:3090"]
    [row] = [d for d in svc.call("db_ls", ADMIN, {}) if d["name"] == "agent-pg"]
    assert row["agents"] == ["db-node-1", "db-node-2"]
    _, a3 = _join_agent(svc, hostname="db-node-3")
    res = _beat(svc, a3, dbs=[{**PG, "protocol": "mysql"}], hostname="db-node-3")
    assert res["accepted"] == [] and "protocol 'postgres'" in res["rejected"]["agent-pg"]
    # the labels RBAC checks must not depend on which agent registered first
    res = _beat(svc, a3, dbs=[{**PG, "labels": {"env": "prod"}}], hostname="db-node-3")
    assert res["accepted"] == [] and "with labels" in res["rejected"]["agent-pg"]


def test_heartbeat_ttl_is_clamped_and_expiry_drops_databases(svc, clock):
    _, agent = _join_agent(svc)
    assert _beat(svc, agent, ttl=0.5)["expires"] == clock.now + MIN_HEARTBEAT_TTL
    assert _beat(svc, agent, ttl=10**6)["expires"] == clock.now + MAX_HEARTBEAT_TTL
    assert _beat(svc, agent)["expires"] == clock.now + 60  # default
    with pytest.raises(BadRequest, match="seconds"):
        _beat(svc, agent, ttl="60s")
    with pytest.raises(BadRequest, match="addr"):
        _beat(svc, agent, addr="nowhere")
    clock.now += 59
    assert svc.database("agent-pg").name == "agent-pg"
    clock.now += 1.5
    with pytest.raises(NotFound, match="not served"):
        svc.database("agent-pg")
    assert "agent-pg" not in [d["name"] for d in svc.call("db_ls", ADMIN, {})]
    assert svc.call("agents_ls", ADMIN, {}) == []
    assert svc.agents.live() == []  # audited once, not on every look
    lost = svc.audit.query(types=[audit.AGENT_LOST])
    assert len(lost) == 1 and lost[0].fields["databases"] == ["agent-pg"]
    # the agent comes back with a new heartbeat
    _beat(svc, agent)
    assert svc.database("agent-pg").name == "agent-pg"


def test_goodbye_removes_at_once(svc):
    _, agent = _join_agent(svc)
    _beat(svc, agent)
    assert svc.call("agent_goodbye", agent, {}) == {"ok": True}
    with pytest.raises(NotFound):
        svc.database("agent-pg")
    assert svc.agents.servers_for("agent-pg") == []
    bye = svc.audit.query(types=[audit.AGENT_GOODBYE])
    assert bye[0].fields["databases"] == ["agent-pg"]


def test_locked_agent_is_refused_and_dropped(svc):
    res, agent = _join_agent(svc)
    _beat(svc, agent)
    svc.call("lock", ADMIN, {"target_kind": "user", "target": agent.user, "message": "pwned"})
    assert svc.agents.servers_for("agent-pg") == []  # dropped when the lock was made
    with pytest.raises(Locked, match="pwned"):
        _beat(svc, agent)
    with pytest.raises(Locked):
        svc.call("agent_renew", agent, {"public_key": _pem(_key())})
    with pytest.raises(Locked):
        svc.call("agent_sign_db_client", agent, {"db_user": "alice", "public_key": _pem(_key())})
    lost = svc.audit.query(types=[audit.AGENT_LOST])
    assert lost[0].fields["host_id"] == res["host_id"] and "pwned" in lost[0].fields["reason"]
    # a lock on the Db role stops every agent, including new joins
    svc.call("lock", ADMIN, {"target_kind": "role", "target": "Db"})
    tok = _db_token(svc)
    with pytest.raises(Locked):
        svc.call("agent_join", None, {"token": tok, "public_key": _pem(_key())})


# ---- db_client certificates -----------------------------------------------------------

def test_sign_db_client_needs_a_live_heartbeat(svc, clock):
    """(Grants, the other half of the rule, are in test_agent_grants.py.)"""
    joined, agent = _join_agent(svc)
    key = _key()

    def req() -> dict:
        grant = svc.agents.grant_session(session_id=1, host_id=joined["host_id"],
                                         service="agent-pg", db_name="example-db",
                                         db_user="alice", user="bot-example")
        return {"db_user": "alice", "public_key": _pem(key), "service": "agent-pg",
                "grant": grant}

    with pytest.raises(AccessDenied, match="heartbeat first"):
        svc.call("agent_sign_db_client", agent, req())
    _beat(svc, agent)
    res = svc.call("agent_sign_db_client", agent, {**req(), "ttl": "10h"})
    cert = _cert(res["cert"])
    cert.verify_directly_issued_by(svc.cas["db_client"].cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.public_key() == key.public_key()
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=4) < left <= dt.timedelta(minutes=5)  # capped at 5 min
    assert res["db_ca"] == svc.cas["db"].cert_pem.decode()
    ev = [e for e in svc.audit.query(types=[audit.CERT_CREATE])
          if e.fields.get("usage") == "db_client"]
    assert ev[0].fields["db_user"] == "alice" and ev[0].fields["host_id"] in agent.user
    with pytest.raises(BadRequest):
        svc.call("agent_sign_db_client", agent, {**req(), "db_user": ""})
    clock.now += 61
    with pytest.raises(AccessDenied, match="heartbeat first"):
        svc.call("agent_sign_db_client", agent, req())


# ---- who may call what ----------------------------------------------------------------

AGENT_METHODS = ("agent_renew", "agent_heartbeat", "agent_goodbye", "agent_sign_db_client")


def test_bots_and_admins_cannot_call_agent_methods(svc):
    bot = _bot(svc)
    for caller in (bot, ADMIN, None):
        for method in AGENT_METHODS:
            with pytest.raises(AccessDenied, match="agent identity"):
                svc.call(method, caller, {"public_key": _pem(_key()), "addr": "h:1"})
    assert svc.audit.query(types=[audit.AUTH_DENIED])


def test_agents_cannot_call_bot_or_admin_methods(svc):
    _, agent = _join_agent(svc)
    _beat(svc, agent)
    params = {"public_key": _pem(_key()), "service": "agent-pg", "username": "alice",
              "database": "example-db", "name": "x", "roles": []}
    for method in ("renew", "issue_database_cert", "bots_ls", "bots_add", "agents_ls",
                   "tokens_add", "lock", "status", "sign_db_server", "audit"):
        with pytest.raises(AccessDenied):
            svc.call(method, agent, params)
    assert svc.call("bots_ls", ADMIN, {}) == []


# ---- RBAC on agent-served databases ---------------------------------------------------

def test_issue_database_cert_for_an_agent_database_uses_heartbeat_labels(svc):
    svc.call("create_roles", ADMIN, {"yaml": ROLE.replace("'*': '*'", "env: dev"),
                                     "force": True})
    bot = _bot(svc)
    _, agent = _join_agent(svc)
    req = {"public_key": _pem(_key()), "service": "agent-pg", "database": "example-db",
           "username": "alice"}
    with pytest.raises(NotFound):  # not registered yet
        svc.call("issue_database_cert", bot, req)
    _beat(svc, agent, dbs=[{**PG, "labels": {"env": "prod"}}])
    with pytest.raises(AccessDenied):  # the role matches env=dev only
        svc.call("issue_database_cert", bot, req)
    assert "agent-pg" not in [d["name"] for d in svc.call("db_ls", bot, {})]
    _beat(svc, agent, dbs=[PG])  # now env=dev
    cert = _ident(svc.call("issue_database_cert", bot, req)["cert"])
    assert cert.route is not None and cert.route.service == "agent-pg"
    assert cert.route.protocol == "postgres" and cert.route.username == "alice"
    assert "agent-pg" in [d["name"] for d in svc.call("db_ls", bot, {})]
    with pytest.raises(AccessDenied):
        svc.call("issue_database_cert", bot, {**req, "username": "bob"})


def test_public_key_is_checked_on_join(svc):
    tok = _db_token(svc)
    with pytest.raises(BadRequest, match="public_key"):
        svc.call("agent_join", None, {"token": tok, "public_key": "garbage"})
    key = load_public_key(_pem(_key()).encode())
    assert svc.agents.join(tok, key, hosts=["localhost"], hostname="n",
                           ttl=dt.timedelta(hours=1)).host_id
