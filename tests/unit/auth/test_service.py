"""The auth service in-process: bots, tokens, generations, locks, audit, RBAC on issue."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.errors import AccessDenied, AlreadyExists, BadRequest, Locked, NotFound
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import AuthoritySet, generate_private_key, public_key_pem
from mwiproxy.identity.certs import Identity, identity_from_certificate
from tests._testbase.fixtures import GUIDE_ROLE as ROLE
from tests._testbase.pgstore import BACKENDS

ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,))
# the tests that also run on PostgreSQL storage (the rest: SQLite only, to keep CI short)
on_both_backends = pytest.mark.parametrize("svc", BACKENDS, indirect=True)


def _pub() -> str:
    return public_key_pem(generate_private_key().public_key()).decode()


def _ident(pem: str) -> Identity:
    from cryptography import x509
    return identity_from_certificate(x509.load_pem_x509_certificate(pem.encode()))


def _join(svc) -> tuple[str, Identity]:
    tok = svc.call("bots_add", ADMIN, {"name": "example", "roles": []})["token"]
    res = svc.call("join", None, {"token": tok, "public_key": _pub()})
    return tok, _ident(res["cert"])


@on_both_backends
def test_join_gives_renewable_generation_1(svc):
    _, ident = _join(svc)
    assert ident.bot_name == "example" and ident.user == "bot-example"
    assert ident.generation == 1 and ident.renewable
    assert svc.bots.get("example").generation == 1
    assert [e.type for e in svc.audit.query(types=[audit.BOT_JOIN])] == [audit.BOT_JOIN]


@on_both_backends
def test_token_is_one_time_and_expires(svc):
    tok, _ = _join(svc)
    with pytest.raises(AccessDenied, match="already used"):
        svc.call("join", None, {"token": tok, "public_key": _pub()})
    late = svc.call("tokens_add", ADMIN, {"bot_name": "example", "ttl": "10m"})["token"]
    svc.clock_obj.now += 601
    with pytest.raises(AccessDenied, match="expired"):
        svc.call("join", None, {"token": late, "public_key": _pub()})
    with pytest.raises(AccessDenied, match="not known"):
        svc.call("join", None, {"token": "f" * 32, "public_key": _pub()})
    assert len(svc.audit.query(types=[audit.BOT_JOIN_FAILED])) == 3


@on_both_backends
def test_renewal_bumps_generation_and_replay_locks_bot(svc):
    _, gen1 = _join(svc)
    gen2 = _ident(svc.call("renew", gen1, {"public_key": _pub()})["cert"])
    assert gen2.generation == 2
    gen3 = _ident(svc.call("renew", gen2, {"public_key": _pub()})["cert"])
    assert gen3.generation == 3
    # a copy of the generation-2 identity renewing elsewhere: stolen-certificate detection
    with pytest.raises(Locked, match="possibly a stolen certificate"):
        svc.call("renew", gen2, {"public_key": _pub()})
    assert svc.bots.get("example").generation == 3  # stored state untouched
    ev = svc.audit.query(types=[audit.BOT_GENERATION_MISMATCH])
    assert ev and ev[0].fields["presented"] == 2 and ev[0].fields["expected"] == 3
    # and now even the legitimate holder is locked out
    with pytest.raises(Locked):
        svc.call("renew", gen3, {"public_key": _pub()})
    assert svc.call("locks_ls", ADMIN, {})[0]["target"] == "example"


def test_database_cert_follows_rbac_and_bot_roles(svc):
    _, bot = _join(svc)
    req = {"public_key": _pub(), "service": "example-server", "database": "example-db",
           "username": "alice"}
    with pytest.raises(AccessDenied):  # the bot has no roles yet
        svc.call("issue_database_cert", bot, req)
    svc.call("bots_update", ADMIN, {"name": "example", "add_roles": ["example-role"]})
    cert = _ident(svc.call("issue_database_cert", bot, req)["cert"])
    assert cert.route is not None and cert.route.username == "alice"
    assert cert.route.database == "example-db" and cert.route.protocol == "postgres"
    assert cert.roles == ("example-role",) and oids.USAGE_DATABASE in cert.usage
    with pytest.raises(AccessDenied):
        svc.call("issue_database_cert", bot, {**req, "username": "bob"})
    with pytest.raises(NotFound):
        svc.call("issue_database_cert", bot, {**req, "service": "nope"})
    denied = svc.audit.query(types=[audit.CERT_DENIED])
    assert denied[-1].fields["db_user"] == "bob"


def test_database_cert_cannot_call_the_api(svc):
    _, bot = _join(svc)
    svc.call("bots_update", ADMIN, {"name": "example", "add_roles": ["example-role"]})
    req = {"public_key": _pub(), "service": "example-server", "database": "example-db",
           "username": "alice"}
    dbcert = _ident(svc.call("issue_database_cert", bot, req)["cert"])
    for method in ("renew", "issue_database_cert", "bots_ls"):
        with pytest.raises(AccessDenied):
            svc.call(method, dbcert, req)


@on_both_backends
def test_locks_refuse_certificates(svc):
    _, bot = _join(svc)
    svc.call("bots_update", ADMIN, {"name": "example", "add_roles": ["example-role"]})
    lock = svc.call("lock", ADMIN, {"target_kind": "role", "target": "example-role",
                                    "message": "incident 42", "ttl": "1h"})
    req = {"public_key": _pub(), "service": "example-server", "database": "example-db",
           "username": "alice"}
    with pytest.raises(AccessDenied, match="incident 42"):
        svc.call("issue_database_cert", bot, req)
    with pytest.raises(Locked):
        svc.call("renew", bot, {"public_key": _pub()})
    svc.call("locks_rm", ADMIN, {"id": lock["id"]})
    assert svc.call("issue_database_cert", bot, req)["cert"]
    svc.call("lock", ADMIN, {"target_kind": "bot", "target": "example", "ttl": "1m"})
    with pytest.raises(AccessDenied):
        svc.call("issue_database_cert", bot, req)
    svc.clock_obj.now += 61  # lock expired
    assert svc.call("issue_database_cert", bot, req)["cert"]


def test_admin_only_methods(svc):
    _, bot = _join(svc)
    for method in ("bots_ls", "create_roles", "lock", "audit", "sign_db_server", "status"):
        with pytest.raises(AccessDenied):
            svc.call(method, None, {})
        with pytest.raises(AccessDenied):
            svc.call(method, bot, {})
    assert svc.audit.query(types=[audit.AUTH_DENIED])


def test_bot_management_errors(svc):
    svc.call("bots_add", ADMIN, {"name": "b1", "roles": ["example-role"]})
    with pytest.raises(AlreadyExists):
        svc.call("bots_add", ADMIN, {"name": "b1", "roles": []})
    with pytest.raises(NotFound, match="ghost"):
        svc.call("bots_add", ADMIN, {"name": "b2", "roles": ["ghost"]})
    with pytest.raises(BadRequest):
        svc.call("bots_add", ADMIN, {"name": "Bad Name!", "roles": []})
    with pytest.raises(BadRequest, match="does not have"):
        svc.call("bots_update", ADMIN, {"name": "b1", "remove_roles": ["nope"]})
    upd = svc.call("bots_update", ADMIN, {"name": "b1", "remove_roles": ["example-role"]})
    assert upd["roles"] == []
    svc.call("bots_update", ADMIN, {"name": "b1", "add_roles": ["example-role"]})
    with pytest.raises(BadRequest, match="used by bot"):
        svc.call("delete_role", ADMIN, {"name": "example-role"})
    svc.call("bots_rm", ADMIN, {"name": "b1"})
    assert svc.call("tokens_ls", ADMIN, {}) == []


def test_role_create_conflict_and_bad_yaml(svc):
    with pytest.raises(AlreadyExists):
        svc.call("create_roles", ADMIN, {"yaml": ROLE})
    assert svc.call("create_roles", ADMIN, {"yaml": ROLE, "force": True})["created"]
    with pytest.raises(BadRequest, match="role.yaml:2"):
        svc.call("create_roles", ADMIN, {"yaml": "kind: role\nversion: [", "filename": "role.yaml"})
    before = svc.storage.list_roles()
    with pytest.raises(BadRequest):
        svc.call("create_roles", ADMIN, {"yaml": ROLE.replace("db_users", "db_userz")})
    assert svc.storage.list_roles() == before


def test_audit_log_is_append_only(svc):
    _join(svc)
    assert svc.audit.flush(60)  # the rows the triggers must protect are stored
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        svc.storage._db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        svc.storage._db.execute("UPDATE audit SET type = 'x'")


def test_sign_db_server(svc):
    res = svc.call("sign_db_server", ADMIN, {"hosts": ["localhost", "127.0.0.1"], "ttl": "24h",
                                             "public_key": _pub()})
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(res["cert"].encode())
    cert.verify_directly_issued_by(svc.cas["db"].cert)
    assert res["cas"] == svc.cas["db_client"].cert_pem.decode()
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < left <= dt.timedelta(hours=24)


def test_db_ls_shows_a_bot_only_what_its_roles_match(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "s.db"))
    cas = AuthoritySet.load_or_create(tmp_path / "ca", "c")
    dbs = [DatabaseConfig(name="dev-db", protocol="postgres", uri="h:1", static_labels={"env": "dev"}),
           DatabaseConfig(name="prod-db", protocol="postgres", uri="h:2",
                          static_labels={"env": "prod"})]
    s = AuthService(cluster="c", storage=storage, cas=cas, databases=dbs)
    s.call("create_roles", ADMIN, {"yaml": ROLE.replace("'*': '*'", "env: dev")})
    tok = s.call("bots_add", ADMIN, {"name": "b", "roles": ["example-role"]})["token"]
    bot = _ident(s.call("join", None, {"token": tok, "public_key": _pub()})["cert"])
    assert [d["name"] for d in s.call("db_ls", bot, {})] == ["dev-db"]
    assert [d["name"] for d in s.call("db_ls", ADMIN, {})] == ["dev-db", "prod-db"]
    s.audit.close()
    storage.close()


def test_an_unreachable_storage_is_an_unavailable_error_not_a_bug(svc, monkeypatch, caplog):
    from mwiproxy.auth.api import _reply
    from mwiproxy.auth.storage.base import StorageUnavailable

    def down() -> None:
        raise StorageUnavailable("the connection to the PostgreSQL storage was lost")

    monkeypatch.setattr(svc.storage, "list_roles", down)
    reply = _reply(7, "get_roles", svc, ADMIN, {}, "127.0.0.1")
    assert reply == {"id": 7, "error": {"code": "unavailable", "message": (
        "the connection to the PostgreSQL storage was lost")}}
    assert "Traceback" not in caplog.text and "storage was lost" in caplog.text
