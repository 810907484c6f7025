"""Agent heartbeats and session grants shared through the storage: two auth services on
one storage (two cluster processes' view; each test runs on SQLite and PostgreSQL) see
each other's agents after a refresh, a restarted one finds them at once, a loss is
audited once, and a grant taken through one is honoured through the other."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.agent_grants import GrantRefused, GrantStore
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.base import Storage
from tests._testbase.authkit import Clock, guide_service, make_service
from tests.unit.auth.test_agents import ADMIN, PG, _beat, _join_agent

Open = Callable[[], AuthService]


@pytest.fixture
def services(tmp_path, clock, open_storage) -> Iterator[Open]:  # type: ignore[no-untyped-def]
    """Opens another auth service on the test's one storage and CA directory."""
    opened: list[AuthService] = []

    def open_one() -> AuthService:
        storage = open_storage()  # the guide's role is made once, by the first
        service = (make_service if opened else guide_service)(tmp_path, clock, storage)
        opened.append(service)
        return service
    yield open_one
    for s in opened:
        s.audit.close()
        s.storage.close()


def _names(svc: AuthService) -> list[str]:
    return [d["name"] for d in svc.call("db_ls", ADMIN, {})]


def _lost(*svcs: AuthService) -> list[audit.AuditEvent]:
    for s in svcs:  # each process's queued events are stored
        s.audit.query(types=[audit.AGENT_LOST])
    return svcs[0].audit.query(types=[audit.AGENT_LOST])


def test_an_agent_heartbeating_to_a_is_routed_by_b_and_survives_a_restart(services):
    a = services()
    b = services()
    joined, agent = _join_agent(a)
    _beat(a, agent)
    assert "agent-pg" not in _names(b)  # not yet read
    b.agents.refresh()
    assert "agent-pg" in _names(b)
    (rec, db), = b.agents.servers_for("agent-pg")
    assert (rec.host_id, rec.addr, rec.hostname) == (joined["host_id"], "10.0.0.5:3090",
                                                     "db-node-1")
    assert db.static_labels == PG["labels"] and db.protocol == "postgres"
    assert rec.cert_sha256 == hashlib.sha256(agent.cert_der).hexdigest()
    listed = b.call("agents_ls", ADMIN, {})
    assert [x["cert_sha256"] for x in listed] == [rec.cert_sha256]
    # a restarted process (a new service on the storage) has it from the start
    assert "agent-pg" in _names(services())
    # the agent heartbeats to B now; A learns its new address from the storage
    _beat(b, agent, addr="10.0.0.6:3090")
    a.agents.refresh()
    assert [r.addr for r, _ in a.agents.servers_for("agent-pg")] == ["10.0.0.6:3090"]
    # a database another agent serves with other labels is refused through either one
    _, other = _join_agent(a)
    res = _beat(b, other, dbs=[{**PG, "labels": {"env": "prod"}}])
    assert "with labels" in res["rejected"]["agent-pg"]
    # goodbye through B: gone from A at its next read
    b.call("agent_goodbye", agent, {})
    a.agents.refresh()
    assert a.agents.servers_for("agent-pg") == []


def test_an_expired_heartbeat_is_dropped_everywhere_and_audited_once(services, clock: Clock):
    a = services()
    b = services()
    _, agent = _join_agent(a)
    _beat(a, agent, ttl=10)
    b.agents.refresh()
    clock.now += 10
    for s in (a, b, a, b):
        s.agents.refresh()
        assert "agent-pg" not in _names(s)
    lost = _lost(a, b)
    assert len(lost) == 1 and lost[0].fields["databases"] == ["agent-pg"], lost
    assert a.storage.list_agents() == []


def test_a_lock_on_an_agent_drops_it_everywhere_and_is_audited_once(services):
    a = services()
    b = services()
    _, agent = _join_agent(a)
    _beat(a, agent)
    b.agents.refresh()
    a.call("lock", ADMIN, {"target_kind": "user", "target": agent.user, "message": "pwned"})
    b.locks.refresh()  # what the lock feed does on B
    assert a.agents.servers_for("agent-pg") == b.agents.servers_for("agent-pg") == []
    b.agents.refresh()
    assert b.agents.servers_for("agent-pg") == []
    lost = _lost(a, b)
    assert len(lost) == 1 and "pwned" in lost[0].fields["reason"], lost


def test_shared_grants_are_taken_once_through_any_process(storage: Storage, clock: Clock):
    one = GrantStore(clock, ttl=30, shared=storage)
    two = GrantStore(clock, ttl=30, shared=storage)
    secret = one.issue(session_id=7, host_id="h1", service="pg", db_name="app",
                       db_user="alice", user="bob")
    assert storage.take_grant(secret) is None  # stored by its hash, never the secret
    with pytest.raises(GrantRefused, match="for database user 'alice'"):
        two.consume(secret, host_id="h1", service="pg", db_user="postgres")
    with pytest.raises(GrantRefused, match="unknown or already used"):  # refused: used up
        one.consume(secret, host_id="h1", service="pg", db_user="alice")
    secret = one.issue(session_id=8, host_id="h1", service="pg", db_name="app",
                       db_user="alice", user="bob")
    grant = two.consume(secret, host_id="h1", service="pg", db_user="alice")
    assert (grant.session_id, grant.db_name, grant.user) == (8, "app", "bob")
    with pytest.raises(GrantRefused, match="unknown or already used"):
        one.consume(secret, host_id="h1", service="pg", db_user="alice")
    late = one.issue(session_id=9, host_id="h1", service="pg", db_name="app",
                     db_user="alice", user="bob")
    clock.now += 30
    with pytest.raises(GrantRefused, match="expired"):
        two.consume(late, host_id="h1", service="pg", db_user="alice")
    one.issue(session_id=10, host_id="h1", service="pg", db_name="app", db_user="alice",
              user="bob")  # prunes what expired
    assert storage.prune_grants(clock.now + 29) == 0
