"""The trust core, in-process: every call checks validity, locks and generation at the time
of the call; renewal and join are idempotent for a retry with the same key and lock for a
different one; TTL ceilings hold whatever is asked."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509

from mwiproxy.auth import audit
from mwiproxy.auth.errors import AccessDenied, BadRequest, Locked
from mwiproxy.auth.service import AuthService
from mwiproxy.config.cluster import AuthConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import generate_private_key, public_key_pem
from mwiproxy.identity.certs import DatabaseRoute, Identity, identity_from_certificate

ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,), cluster="example.local")
DB_REQ = {"service": "example-server", "database": "example-db", "username": "alice"}
ROUTE = DatabaseRoute("example-server", "postgres", "alice", "example-db")


def _pub(key=None) -> str:
    return public_key_pem((key or generate_private_key()).public_key()).decode()


def _ident(pem: str) -> Identity:
    return identity_from_certificate(x509.load_pem_x509_certificate(pem.encode()))


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _add_bot(svc: AuthService, name: str = "example") -> str:
    tok = svc.call("bots_add", ADMIN, {"name": name, "roles": ["example-role"]})["token"]
    return str(tok)


def _join(svc: AuthService, name: str = "example") -> Identity:
    tok = _add_bot(svc, name)
    return _ident(svc.call("join", None, {"token": tok, "public_key": _pub()})["cert"])


def _renew(svc: AuthService, ident: Identity, key=None) -> Identity:
    return _ident(svc.call("renew", ident, {"public_key": _pub(key)})["cert"])


def _denials(svc: AuthService) -> list[str]:
    return [e.fields["reason"] for e in svc.audit.query(types=[audit.AUTH_DENIED])]


# --- validity at the time of the call ----------------------------------------------------

@pytest.mark.parametrize("method,params", [
    ("renew", {"public_key": None}),
    ("issue_database_cert", {"public_key": None, **DB_REQ}),
    ("db_ls", {}),
])
def test_an_expired_bot_certificate_authorizes_nothing(svc, method, params):
    bot = _join(svc)
    # what a resumed TLS session or a connection held open past notAfter hands the service
    expired = dataclasses.replace(bot, expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    params = {k: (_pub() if v is None else v) for k, v in params.items()}
    with pytest.raises(AccessDenied, match="expired at"):
        svc.call(method, expired, params)
    assert any("expired at" in r for r in _denials(svc))
    assert svc.bots.get("example").generation == 1  # nothing renewed


def test_a_not_yet_valid_or_foreign_certificate_authorizes_nothing(svc):
    bot = _join(svc)
    early = dataclasses.replace(bot, not_before=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    with pytest.raises(AccessDenied, match="not valid before"):
        svc.call("renew", early, {"public_key": _pub()})
    foreign = dataclasses.replace(ADMIN, cluster="other.local")
    with pytest.raises(AccessDenied, match="belongs to cluster 'other.local'"):
        svc.call("bots_ls", foreign, {})
    expired_admin = dataclasses.replace(ADMIN, expires=dt.datetime.now(dt.UTC))
    with pytest.raises(AccessDenied, match="expired"):
        svc.call("bots_ls", expired_admin, {})


def test_a_lock_applies_to_every_call_of_the_identity(svc):
    bot = _join(svc)
    assert svc.call("db_ls", bot, {}) is not None
    svc.call("lock", ADMIN, {"target_kind": "bot", "target": "example", "message": "ir-7"})
    for method in ("db_ls", "renew", "issue_database_cert"):
        with pytest.raises(Locked, match="ir-7"):
            svc.call(method, bot, {"public_key": _pub(), **DB_REQ})
    assert sum("ir-7" in r for r in _denials(svc)) == 3
    admin_lock = svc.call("lock", ADMIN, {"target_kind": "user", "target": "admin"})
    with pytest.raises(Locked):
        svc.call("bots_ls", ADMIN, {})
    assert admin_lock["target"] == "admin"


def test_only_the_current_generation_obtains_database_certificates(svc):
    gen1 = _join(svc)
    assert svc.call("issue_database_cert", gen1, {"public_key": _pub(), **DB_REQ})["cert"]
    gen2 = _renew(svc, gen1)
    with pytest.raises(AccessDenied, match="generation 1 .* at generation 2"):
        svc.call("issue_database_cert", gen1, {"public_key": _pub(), **DB_REQ})
    with pytest.raises(AccessDenied, match="renewed since"):
        svc.call("db_ls", gen1, {})
    assert svc.call("issue_database_cert", gen2, {"public_key": _pub(), **DB_REQ})["cert"]
    assert not svc.locks.active()  # refused, not locked: only renewals judge theft


def test_database_certificates_follow_the_bot_lineage_and_generation(svc):
    gen1 = _join(svc)
    db1 = _ident(svc.call("issue_database_cert", gen1, {"public_key": _pub(), **DB_REQ})["cert"])
    assert db1.generation == 1 and db1.bot_instance_id == gen1.bot_instance_id
    assert svc.authorize_database(db1, ROUTE) == ["example-role"]
    gen2 = _renew(svc, gen1)
    # outputs renew on their own schedule: a database certificate stays good while the
    # identity renews (bound to the lineage, not the generation)
    assert svc.authorize_database(db1, ROUTE)
    _renew(svc, _renew(svc, gen2))
    assert svc.authorize_database(db1, ROUTE)
    with pytest.raises(AccessDenied, match="at generation 4"):  # a forged future one
        svc.authorize_database(dataclasses.replace(db1, generation=9), ROUTE)
    # a fresh join starts a new lineage: the old lineage's certificates stop at once
    tok = svc.call("tokens_add", ADMIN, {"bot_name": "example"})["token"]
    new = _ident(svc.call("join", None, {"token": tok, "public_key": _pub()})["cert"])
    db_new = _ident(svc.call("issue_database_cert", new,
                             {"public_key": _pub(), **DB_REQ})["cert"])
    assert svc.authorize_database(db_new, ROUTE)
    stale = dataclasses.replace(db1, generation=1)
    with pytest.raises(AccessDenied, match="earlier join"):
        svc.authorize_database(stale, ROUTE)
    svc.call("bots_rm", ADMIN, {"name": "example"})
    with pytest.raises(AccessDenied, match="not found|no longer exists"):
        svc.authorize_database(db_new, ROUTE)


# --- renewal and join survive a lost reply -----------------------------------------------

def test_a_renewal_retried_with_the_same_key_gets_the_same_generation(svc):
    gen1 = _join(svc)
    key = generate_private_key()
    first = _cert(svc.call("renew", gen1, {"public_key": _pub(key)})["cert"])
    # the reply was lost: the bot asks again with its old certificate and the same key
    again = _cert(svc.call("renew", gen1, {"public_key": _pub(key)})["cert"])
    assert _ident(_pem(again)).generation == _ident(_pem(first)).generation == 2
    assert again.public_key() == first.public_key() == key.public_key()
    assert svc.bots.get("example").generation == 2
    assert not svc.locks.active()
    retries = [e for e in svc.audit.query(types=[audit.BOT_RENEW]) if e.fields.get("retry")]
    assert len(retries) == 1 and retries[0].fields["generation"] == 2
    gen3 = _renew(svc, _ident(_pem(again)))  # and the lineage goes on
    assert gen3.generation == 3


def test_the_previous_generation_with_another_key_locks_the_bot(svc):
    gen1 = _join(svc)
    gen2 = _renew(svc, gen1, generate_private_key())
    with pytest.raises(Locked, match="possibly a stolen certificate"):
        _renew(svc, gen1, generate_private_key())  # a copy renewing with its own key
    ev = svc.audit.query(types=[audit.BOT_GENERATION_MISMATCH])
    assert ev[-1].fields["presented"] == 1 and ev[-1].fields["expected"] == 2
    with pytest.raises(Locked):  # both copies are locked out
        _renew(svc, gen2)


def test_a_retry_two_generations_behind_locks_even_with_the_right_key(svc):
    gen1 = _join(svc)
    k2 = generate_private_key()
    gen2 = _renew(svc, gen1, k2)
    _renew(svc, gen2, generate_private_key())
    with pytest.raises(Locked):
        _renew(svc, gen1, k2)


def test_an_earlier_lineage_renewing_locks_the_bot(svc):
    old = _join(svc)
    tok = svc.call("tokens_add", ADMIN, {"bot_name": "example"})["token"]
    svc.call("join", None, {"token": tok, "public_key": _pub()})
    with pytest.raises(Locked, match="earlier join"):
        _renew(svc, old)


def test_a_join_retried_with_the_same_key_gets_its_certificate_again(svc):
    tok = _add_bot(svc)
    key = generate_private_key()
    first = _ident(svc.call("join", None, {"token": tok, "public_key": _pub(key)})["cert"])
    again = _ident(svc.call("join", None, {"token": tok, "public_key": _pub(key)})["cert"])
    assert again.generation == first.generation == 1
    assert again.bot_instance_id == first.bot_instance_id
    with pytest.raises(AccessDenied, match="already used"):  # someone else with the token
        svc.call("join", None, {"token": tok, "public_key": _pub()})
    _renew(svc, again)
    with pytest.raises(AccessDenied, match="already used"):  # too late to retry
        svc.call("join", None, {"token": tok, "public_key": _pub(key)})
    assert not svc.locks.active()


# --- ceilings ----------------------------------------------------------------------------

def test_join_token_ttl_is_capped(svc):
    with pytest.raises(BadRequest, match=r"auth.max_token_ttl"):
        svc.call("bots_add", ADMIN, {"name": "example", "roles": [], "token_ttl": "100000h"})
    assert svc.storage.get_bot("example") is None  # refused before anything was stored
    _add_bot(svc)
    for params in ({"bot_name": "example", "ttl": "25h"}, {"type": "db", "ttl": "25h"}):
        with pytest.raises(BadRequest, match="longer than this cluster allows"):
            svc.call("tokens_add", ADMIN, params)
    with pytest.raises(BadRequest, match="negative|positive"):
        svc.call("tokens_add", ADMIN, {"bot_name": "example", "ttl": "-5m"})
    with pytest.raises(BadRequest, match="positive"):
        svc.call("tokens_add", ADMIN, {"bot_name": "example", "ttl": "0s"})
    svc.limits = AuthConfig(max_token_ttl=dt.timedelta(hours=48))
    tok = svc.call("tokens_add", ADMIN, {"type": "db", "ttl": "25h"})
    assert 24 * 3600 < tok["expires"] - svc.clock() <= 25 * 3600


def test_certificate_ttls_are_capped_by_the_cluster(svc):
    tok = _add_bot(svc)
    res = svc.call("join", None, {"token": tok, "public_key": _pub(), "ttl": "1000h"})
    left = _cert(res["cert"]).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert left <= dt.timedelta(hours=24)
    svc.limits = AuthConfig(max_certificate_ttl=dt.timedelta(minutes=10))
    bot = _ident(res["cert"])
    db = svc.call("issue_database_cert", bot, {"public_key": _pub(), "ttl": "1h", **DB_REQ})
    left = _cert(db["cert"]).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert left <= dt.timedelta(minutes=10)
    # the ceiling is read at each call (a SIGHUP may lower it): bot identities follow
    renewed = svc.call("renew", bot, {"public_key": _pub(), "ttl": "1h"})
    left = _cert(renewed["cert"]).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert left <= dt.timedelta(minutes=10)


def _pem(cert: x509.Certificate) -> str:
    from mwiproxy.identity.authorities import cert_pem
    return cert_pem(cert).decode()
