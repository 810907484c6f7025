"""The Storage contract: every test body runs on SQLite and on PostgreSQL (`storage`)."""

from __future__ import annotations

import pytest

from mwiproxy.auth.storage.base import (
    AgentHeartbeat,
    BotRecord,
    LockRecord,
    TokenRecord,
    TokenUnusable,
)
from mwiproxy.auth.storage.chain import verify_chain

NOW = 1_800_000_000.0


def test_roles_put_get_overwrite_delete(storage):
    assert storage.put_role("dev", {"name": "dev", "v": 1}, overwrite=False)
    assert not storage.put_role("dev", {"name": "dev", "v": 2}, overwrite=False)
    assert storage.get_role("dev") == {"name": "dev", "v": 1}
    assert storage.put_role("dev", {"name": "dev", "v": 3}, overwrite=True)
    storage.put_role("admin", {"name": "admin"}, overwrite=False)
    assert [r["name"] for r in storage.list_roles()] == ["admin", "dev"]
    assert storage.get_role("dev")["v"] == 3
    assert storage.delete_role("dev") and not storage.delete_role("dev")
    assert storage.get_role("dev") is None


def _bot(name: str = "b1") -> BotRecord:
    return BotRecord(name, ["dev"], 0, {"logins": ["alice"]}, NOW, NOW)


def test_bots_and_generation_compare_and_swap(storage):
    assert storage.create_bot(_bot())
    assert not storage.create_bot(_bot())
    storage.set_generation("b1", 1, NOW + 1, instance_id="i-1", issued={"generation": 1})
    assert storage.bump_generation("b1", 1, NOW + 2, {"generation": 2, "key_sha256": "k"})
    assert not storage.bump_generation("b1", 1, NOW + 3, {"generation": 2})
    bot = storage.get_bot("b1")
    assert (bot.generation, bot.instance_id, bot.last_seen) == (2, "i-1", NOW + 2)
    assert bot.issued == {"generation": 2, "key_sha256": "k"}
    assert bot.traits == {"logins": ["alice"]} and bot.roles == ["dev"]
    assert storage.set_bot_roles("b1", ["ops"]) and not storage.set_bot_roles("nope", [])
    storage.create_bot(_bot("a0"))
    assert [b.name for b in storage.list_bots()] == ["a0", "b1"]
    assert storage.get_bot("b1").roles == ["ops"]


def test_deleting_a_bot_deletes_its_tokens(storage):
    storage.create_bot(_bot())
    storage.create_token(TokenRecord("t" * 64, "bot", "b1", NOW + 60, NOW))
    storage.create_token(TokenRecord("u" * 64, "bot", "other", NOW + 60, NOW + 1))
    assert storage.delete_bot("b1") and not storage.delete_bot("b1")
    assert [t.token_id for t in storage.list_tokens()] == ["u" * 64]


def test_tokens_are_single_use_and_say_why_not(storage):
    storage.create_token(TokenRecord("a" * 64, "bot", "b1", NOW + 60, NOW))
    storage.create_token(TokenRecord("b" * 64, "db", "", NOW - 1, NOW - 60))
    used = storage.consume_token("a" * 64, NOW)
    assert (used.token_id, used.kind, used.bot_name, used.used_at) == ("a" * 64, "bot", "b1",
                                                                       NOW)
    with pytest.raises(TokenUnusable, match="already used"):
        storage.consume_token("a" * 64, NOW)
    with pytest.raises(TokenUnusable, match="expired"):
        storage.consume_token("b" * 64, NOW)
    with pytest.raises(TokenUnusable, match="not known"):
        storage.consume_token("c" * 64, NOW)
    assert [t.token_id for t in storage.list_tokens()] == ["b" * 64, "a" * 64]
    assert storage.delete_token("") == 0
    assert storage.delete_token("aaaa") == 1
    assert [t.used_at for t in storage.list_tokens()] == [None]


def test_locks_expire_in_listing(storage):
    storage.create_lock(LockRecord("l1", "bot", "b1", "stolen", None, NOW))
    storage.create_lock(LockRecord("l2", "role", "dev", "audit", NOW + 10, NOW + 1))
    assert [lk.lock_id for lk in storage.list_locks()] == ["l1", "l2"]
    assert [lk.lock_id for lk in storage.list_locks(now=NOW + 10)] == ["l1"]
    assert storage.list_locks()[1] == LockRecord("l2", "role", "dev", "audit", NOW + 10,
                                                 NOW + 1)
    assert storage.delete_lock("l1") and not storage.delete_lock("l1")


def test_meta(storage):
    assert storage.get_meta("cluster_name") is None
    storage.set_meta("cluster_name", "a")
    storage.set_meta("cluster_name", "b")
    assert storage.get_meta("cluster_name") == "b"


def test_audit_batches_chain_and_query(storage):
    ids = storage.append_audit_batch([(NOW, "bot.join", {"bot": "b1"}),
                                      (NOW + 1, "bot.renew", {"bot": "b1", "gen": 2})])
    ids += storage.append_audit_batch([(NOW + 2, "lock.create", {"n": 1.5})])
    assert ids == [1, 2, 3]
    tail, events = storage.audit_chain()
    report = verify_chain(tail, events)
    assert report.intact and report.events == 3 and report.head.event_id == 3
    assert tail.highest_id == 3
    got = storage.query_audit(since=NOW + 1)
    assert [(e.event_id, e.type, e.fields) for e in got] == [
        (2, "bot.renew", {"bot": "b1", "gen": 2}), (3, "lock.create", {"n": 1.5})]
    assert [e.event_id for e in storage.query_audit(types=["bot.join", "lock.create"])] == [1, 3]
    assert [e.event_id for e in storage.query_audit(limit=1)] == [3]
    assert storage.audit_guards_missing() == []


def test_audit_query_by_session(storage):
    a, b = "a" * 32, "b" * 32
    storage.append_audit_batch([
        (NOW, "db.session.start", {"session": a}),
        (NOW + 1, "db.session.start", {"session": b}),
        (NOW + 2, "db.session.query", {"session": a, "query": "select 1"}),
        (NOW + 3, "bot.renew", {"session": 7}),  # not a string: no session
        (NOW + 4, "db.session.end", {"session": a})])
    got = storage.query_audit(session=a)
    assert [(e.event_id, e.type) for e in got] == [
        (1, "db.session.start"), (3, "db.session.query"), (5, "db.session.end")]
    assert [e.event_id for e in storage.query_audit(session=a, types=["db.session.end"])] == [5]
    assert [e.event_id for e in storage.query_audit(session=a, limit=2)] == [3, 5]
    assert [e.event_id for e in storage.query_audit(session=b, since=NOW + 2)] == []
    assert storage.query_audit(session="c" * 32) == []
    tail, events = storage.audit_chain()
    assert verify_chain(tail, events).intact


def test_audit_query_pages_back_with_before(storage):
    storage.append_audit_batch([(NOW + i, "db.session.query" if i % 2 else "bot.renew",
                                 {"session": "a" * 32, "i": i}) for i in range(10)])
    assert [e.event_id for e in storage.query_audit(before=6)] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in storage.query_audit(before=6, limit=2)] == [4, 5]
    assert [e.event_id for e in storage.query_audit(before=1)] == []
    queries = storage.query_audit(types=["db.session.query"], before=8, limit=2)
    assert [e.event_id for e in queries] == [4, 6]  # ids 2, 4, 6, 8, 10 are queries
    by_session = storage.query_audit(session="a" * 32, before=3, since=NOW + 1)
    assert [e.event_id for e in by_session] == [2]


def test_a_second_instance_continues_the_chain(open_storage):
    one = open_storage()
    one.append_audit_batch([(NOW, "a", {})])
    two = open_storage()
    try:
        assert two.append_audit_batch([(NOW + 1, "b", {})]) == [2]
        assert one.append_audit_batch([(NOW + 2, "c", {})]) == [3]
        tail, events = two.audit_chain()
        assert verify_chain(tail, events).intact
    finally:
        one.close()
        two.close()


def _agent(host_id: str, expires: float, addr: str = "10.0.0.5:3080") -> AgentHeartbeat:
    return AgentHeartbeat(host_id, f"{host_id}.example", addr,
                          [{"name": "pg", "protocol": "postgres", "uri": "localhost:5432",
                            "labels": {"env": "dev"}}], expires, expires - 60, "ab" * 32)


def test_agent_heartbeats_are_replaced_listed_and_removed_once(storage):
    storage.put_agent(_agent("h2", NOW + 60))
    storage.put_agent(_agent("h1", NOW + 60))
    storage.put_agent(_agent("h1", NOW + 90, addr="10.0.0.6:3080"))  # the next heartbeat
    assert storage.list_agents() == [_agent("h1", NOW + 90, addr="10.0.0.6:3080"),
                                     _agent("h2", NOW + 60)]
    # an expiry removes it only once it has expired, and for one caller only
    assert not storage.delete_agent("h1", expired_at=NOW + 89)
    assert storage.delete_agent("h1", expired_at=NOW + 90)
    assert not storage.delete_agent("h1", expired_at=NOW + 90)
    assert storage.delete_agent("h2") and not storage.delete_agent("h2")
    assert storage.list_agents() == []


def test_grants_are_taken_once_and_pruned(storage):
    storage.put_grant("k1", '{"session_id": 1}', NOW + 30)
    storage.put_grant("k2", '{"session_id": 2}', NOW + 10)
    assert storage.take_grant("k1") == '{"session_id": 1}'
    assert storage.take_grant("k1") is None
    assert storage.prune_grants(NOW + 9) == 0
    assert storage.prune_grants(NOW + 10) == 1
    assert storage.take_grant("k2") is None


def test_a_new_sqlite_store_uses_16k_pages_and_an_old_one_keeps_its_own(tmp_path):
    import sqlite3

    from mwiproxy.auth.storage.sqlite import SQLiteStorage

    SQLiteStorage(str(tmp_path / "new.db")).close()
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE earlier (x)")
    SQLiteStorage(str(old)).close()
    pages = {name: sqlite3.connect(tmp_path / name).execute("PRAGMA page_size").fetchone()[0]
             for name in ("new.db", "old.db")}
    assert pages == {"new.db": 16384, "old.db": 4096}
