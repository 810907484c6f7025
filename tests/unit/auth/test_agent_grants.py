"""Session grants: an agent has a database-client certificate only for a session the
cluster proxy authorized and sent to it — for that database user, on that database,
once, within seconds. Each attack is refused and audited."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mwiproxy.auth import audit
from mwiproxy.auth.agent_grants import GRANT_TTL, GrantRefused, GrantStore
from mwiproxy.auth.agents import MAX_DB_CLIENT_TTL
from mwiproxy.auth.errors import AccessDenied, Locked
from tests.unit.auth.test_agents import ADMIN, PG, _beat, _join_agent, _key, _pem

OTHER = {**PG, "name": "other-pg", "uri": "10.0.0.6:5432"}


@pytest.fixture
def agent(svc):
    """A joined agent serving agent-pg: (host_id, identity)."""
    res, ident = _join_agent(svc)
    _beat(svc, ident)
    return res["host_id"], ident


def _grant(svc, host_id: str, *, service="agent-pg", db_user="alice", session_id=7) -> str:
    return svc.agents.grant_session(session_id=session_id, host_id=host_id, service=service,
                                    db_name="example-db", db_user=db_user, user="bot-example")


def _sign(svc, ident, *, db_user="alice", service="agent-pg", grant="") -> dict:
    return svc.call("agent_sign_db_client", ident, {
        "db_user": db_user, "service": service, "grant": grant, "public_key": _pem(_key())})


def _denials(svc) -> list[dict]:
    return [e.fields for e in svc.audit.query(types=[audit.AGENT_SIGN_DENIED])]


def _issued(svc) -> list[dict]:
    return [e.fields for e in svc.audit.query(types=[audit.CERT_CREATE])
            if e.fields.get("usage") == "db_client"]


def test_the_happy_path_signs_briefly_and_audits_the_session(svc, agent):
    host_id, ident = agent
    key = _key()
    res = svc.call("agent_sign_db_client", ident, {
        "db_user": "alice", "service": "agent-pg", "grant": _grant(svc, host_id),
        "public_key": _pem(key), "ttl": "10h"})
    cert = x509.load_pem_x509_certificate(res["cert"].encode())
    cert.verify_directly_issued_by(svc.cas["db_client"].cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.public_key() == key.public_key()
    # capped to minutes: an agent caches it, and it may be a superuser's
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) <= MAX_DB_CLIENT_TTL
    assert MAX_DB_CLIENT_TTL <= dt.timedelta(minutes=10)
    [ev] = _issued(svc)
    assert ev["session_id"] == 7 and ev["host_id"] == host_id
    assert (ev["db_service"], ev["db_user"], ev["db_name"]) == ("agent-pg", "alice",
                                                                "example-db")
    assert ev["for_user"] == "bot-example" and ev["user"] == ident.user
    assert _denials(svc) == []


def test_a_rogue_agent_without_a_grant_gets_no_superuser_certificate(svc, agent):
    host_id, ident = agent
    with pytest.raises(AccessDenied, match="no grant"):
        _sign(svc, ident, db_user="postgres")
    with pytest.raises(AccessDenied, match="unknown or already used"):
        _sign(svc, ident, db_user="postgres", grant="made-up")
    assert _issued(svc) == []
    first, second = _denials(svc)
    assert (first["host_id"], first["db_user"], first["db_service"]) == (
        host_id, "postgres", "agent-pg")
    assert "no grant" in first["reason"] and "already used" in second["reason"]


def test_a_grant_for_another_database_user_is_refused_and_spent(svc, agent):
    host_id, ident = agent
    grant = _grant(svc, host_id, db_user="alice")
    with pytest.raises(AccessDenied, match="for database user 'alice', not 'postgres'"):
        _sign(svc, ident, db_user="postgres", grant=grant)
    # spent by the refused try: no second guess with the same secret
    with pytest.raises(AccessDenied, match="already used"):
        _sign(svc, ident, db_user="alice", grant=grant)
    assert _issued(svc) == [] and len(_denials(svc)) == 2


def test_a_grant_for_another_database_is_refused(svc, agent):
    host_id, ident = agent
    with pytest.raises(AccessDenied, match="is for database 'agent-pg', not 'other-pg'"):
        _sign(svc, ident, service="other-pg", grant=_grant(svc, host_id))
    assert _denials(svc)[0]["db_service"] == "other-pg"


def test_an_agent_gets_nothing_for_a_database_it_does_not_serve(svc, agent):
    host_id, ident = agent
    _, other = _join_agent(svc)
    _beat(svc, other, dbs=[OTHER])
    with pytest.raises(AccessDenied, match="does not serve database 'other-pg'"):
        _sign(svc, ident, service="other-pg", grant=_grant(svc, host_id, service="other-pg"))
    assert _issued(svc) == []
    assert "does not serve" in _denials(svc)[0]["reason"]


def test_a_grant_sent_to_one_agent_is_no_good_to_another(svc, agent):
    host_id, ident = agent
    _, other = _join_agent(svc)
    _beat(svc, other)  # serves agent-pg too
    with pytest.raises(AccessDenied, match=f"was given to agent {host_id}"):
        _sign(svc, other, grant=_grant(svc, host_id))
    assert _issued(svc) == []


def test_a_grant_works_once(svc, agent):
    host_id, ident = agent
    grant = _grant(svc, host_id)
    assert _sign(svc, ident, grant=grant)["cert"]
    with pytest.raises(AccessDenied, match="already used"):
        _sign(svc, ident, grant=grant)
    assert len(_issued(svc)) == 1 and len(_denials(svc)) == 1


def test_an_expired_grant_is_refused(svc, agent, clock):
    host_id, ident = agent
    grant = _grant(svc, host_id)
    clock.now += GRANT_TTL
    _beat(svc, ident)  # still registered: only the grant is stale
    with pytest.raises(AccessDenied, match="expired"):
        _sign(svc, ident, grant=grant)
    assert _issued(svc) == []


def test_a_locked_agent_is_refused_even_with_a_grant(svc, agent):
    host_id, ident = agent
    grant = _grant(svc, host_id)
    svc.call("lock", ADMIN, {"target_kind": "user", "target": ident.user, "message": "pwned"})
    with pytest.raises(Locked, match="pwned"):  # the API refuses a locked caller itself
        _sign(svc, ident, grant=grant)
    assert any("pwned" in e.fields["reason"] and e.fields["user"] == ident.user
               for e in svc.audit.query(types=[audit.AUTH_DENIED, audit.AGENT_SIGN_DENIED]))
    # and so does the rule, for a caller that got past the API's check
    with pytest.raises(Locked, match="pwned"):
        svc.agents.sign_db_client(ident, "alice", _key().public_key(),
                                  dt.timedelta(minutes=5), service="agent-pg", grant=grant)
    assert _issued(svc) == [] and "pwned" in _denials(svc)[-1]["reason"]


def test_an_agent_whose_heartbeat_ran_out_is_refused(svc, agent, clock):
    host_id, ident = agent
    clock.now += 61  # past the heartbeat TTL (60 s); the grant itself is new
    grant = _grant(svc, host_id)
    with pytest.raises(AccessDenied, match="register it with a heartbeat"):
        _sign(svc, ident, grant=grant)


def test_the_grant_store_is_bounded_and_prunes_expired_grants(clock):
    store = GrantStore(clock, ttl=30, limit=3)

    def issue(n: int) -> str:
        return store.issue(session_id=n, host_id="h", service="s", db_name="d",
                           db_user="u", user="bot")

    secrets = [issue(n) for n in range(5)]
    assert len(store) == 3  # the two oldest made room
    with pytest.raises(GrantRefused, match="unknown"):
        store.consume(secrets[0], host_id="h", service="s", db_user="u")
    assert store.consume(secrets[4], host_id="h", service="s", db_user="u").session_id == 4
    clock.now += 31
    issue(5)  # pruning runs with each new grant
    assert len(store) == 1
