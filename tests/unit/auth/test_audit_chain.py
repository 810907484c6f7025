"""The audit log's hash chain: each way of tampering with state.db (with the triggers
dropped first, as an attacker with write access would) is found, with the right event id
and reason; an untouched or migrated log verifies; the start-up check audits a break once
and never repairs it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.errors import AccessDenied, BadRequest
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.chain import GENESIS, fields_text, link_hash
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import AuthoritySet
from mwiproxy.identity.certs import Identity

# a forger's row: the chained columns (the `session` index column left empty)
FORGE = "INSERT INTO audit (id, time, type, fields, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)"
EVENTS = 6


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


@pytest.fixture
def db_path(tmp_path):
    """A state.db holding EVENTS events, closed (as after the cluster stopped)."""
    path = str(tmp_path / "state.db")
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage, Clock())
    for i in range(EVENTS):
        log.emit(audit.BOT_JOIN, bot=f"bot-{i}", n=i, note="é\"x")
    log.close()
    storage.close()
    return path


def tamper(path: str, *statements: str, args: tuple = ()) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    for sql in statements:
        db.execute(sql, args if "?" in sql else ())
    db.commit()
    db.close()


def row(path: str, event_id: int) -> tuple:
    db = sqlite3.connect(path)
    r = db.execute("SELECT id, time, type, fields, prev_hash, hash FROM audit WHERE id = ?",
                   (event_id,)).fetchone()
    db.close()
    return r


def reopen(path: str):  # -> (storage, AuditLog)
    storage = SQLiteStorage(path)
    return storage, audit.AuditLog(storage, Clock())


def first_break(path: str, expect_head: str | None = None) -> tuple[int, str]:
    storage, log = reopen(path)
    try:
        report = log.verify(expect_head)
    finally:
        storage.close()
    assert not report.intact
    return report.breaks[0].event_id, report.breaks[0].reason


def test_untouched_log_verifies(db_path):
    storage, log = reopen(db_path)
    report = log.verify()
    assert report.intact and report.events == EVENTS and report.breaks == []
    assert report.head.event_id == EVENTS and report.head.hash == row(db_path, EVENTS)[5]
    assert storage.get_meta("audit_head") == f"{report.head.hash}@{EVENTS}"
    assert log.verify(f"{report.head.hash}@{EVENTS}").intact  # its own head as the anchor
    assert storage.audit_guards_missing() == []
    storage.close()


def test_each_event_links_to_the_one_before(db_path):
    prev = GENESIS
    for event_id in range(1, EVENTS + 1):
        _, t, type_, text, prev_hash, hash_ = row(db_path, event_id)
        assert prev_hash == prev
        assert hash_ == link_hash(prev, event_id, t, type_, text)
        prev = hash_
    assert json.loads(row(db_path, 2)[3]) == {"bot": "bot-1", "n": 1, "note": "é\"x"}


def test_encoding_is_unambiguous():
    # the parts are length-prefixed: moving bytes from one part to the next changes the hash
    assert link_hash(GENESIS, 1, 1.0, "ab", "c") != link_hash(GENESIS, 1, 1.0, "a", "bc")
    assert link_hash(GENESIS, 11, 1.0, "x", "{}") != link_hash(GENESIS, 1, 11.0, "x", "{}")
    assert fields_text({"b": 1, "a": "é"}) == '{"a":"\\u00e9","b":1}'
    # keys that are not strings sort as the text they become, the same before and after
    assert fields_text({10: "x", 2: "y"}) == fields_text({"10": "x", "2": "y"})


def test_deleted_middle_event(db_path):
    tamper(db_path, "DELETE FROM audit WHERE id = 3")
    assert first_break(db_path) == (3, "deleted")


def test_deleted_last_event(db_path):
    tamper(db_path, f"DELETE FROM audit WHERE id = {EVENTS}")
    assert first_break(db_path) == (EVENTS, "truncated")


def test_deleted_last_event_with_head_and_counter_rewritten(db_path):
    anchor = f"{row(db_path, EVENTS)[5]}@{EVENTS}"
    prev = row(db_path, EVENTS - 1)[5]
    tamper(db_path, f"DELETE FROM audit WHERE id = {EVENTS}",
           "UPDATE meta SET value = ? WHERE key = 'audit_head'", args=(f"{prev}@{EVENTS - 1}",))
    # the AUTOINCREMENT counter still remembers the id that was handed out
    assert first_break(db_path) == (EVENTS, "truncated")
    tamper(db_path, f"UPDATE sqlite_sequence SET seq = {EVENTS - 1} WHERE name = 'audit'")
    # everything in the file agrees now: only a head exported earlier shows the loss
    storage, log = reopen(db_path)
    assert log.verify().intact
    storage.close()
    assert first_break(db_path, anchor) == (EVENTS, "anchor")


def test_edited_field(db_path):
    tamper(db_path, "UPDATE audit SET fields = '{\"bot\":\"someone-else\"}' WHERE id = 4")
    assert first_break(db_path) == (4, "edited")


def test_edited_time(db_path):
    tamper(db_path, "UPDATE audit SET time = time + 3600 WHERE id = 2")
    assert first_break(db_path) == (2, "edited")


def test_forged_event_in_place_of_a_deleted_one(db_path):
    # a forged event 3 with a correct hash of its own, linked to event 2
    _, t, type_, _, _, _ = row(db_path, 3)
    prev = row(db_path, 2)[5]
    text = '{"bot":"innocent"}'
    forged = link_hash(prev, 3, t, type_, text)
    tamper(db_path, "DELETE FROM audit WHERE id = 3",
           FORGE, args=(3, t, type_, text, prev, forged))
    assert first_break(db_path) == (4, "inserted")


def test_forged_event_appended(db_path):
    last = row(db_path, EVENTS)
    event_id, t, text = EVENTS + 1, last[1] + 1, '{"bot":"ghost"}'
    forged = link_hash(last[5], event_id, t, "bot.join", text)
    tamper(db_path, FORGE,
           args=(event_id, t, "bot.join", text, last[5], forged))
    assert first_break(db_path) == (EVENTS + 1, "appended")


def test_forged_event_without_a_hash(db_path):
    tamper(db_path, "INSERT INTO audit (time, type, fields) VALUES (1.0, 'bot.join', '{}')")
    assert first_break(db_path) == (EVENTS + 1, "edited")


def test_reordered_events(db_path):
    # events 2 and 3 swap places, hashes and all
    tamper(db_path, "UPDATE audit SET id = 100 WHERE id = 2", "UPDATE audit SET id = 2 WHERE id = 3",
           "UPDATE audit SET id = 3 WHERE id = 100")
    assert first_break(db_path) == (2, "edited")


def test_every_break_is_listed_not_only_the_first(db_path):
    tamper(db_path, "UPDATE audit SET type = 'bot.renew' WHERE id = 2",
           "DELETE FROM audit WHERE id = 5")
    storage, log = reopen(db_path)
    found = [(b.event_id, b.reason) for b in log.verify().breaks]
    storage.close()
    assert found == [(2, "edited"), (5, "deleted")]


def test_whole_chain_recomputed_is_caught_only_by_an_exported_head(db_path):
    anchor = f"{row(db_path, EVENTS)[5]}@{EVENTS}"
    db = sqlite3.connect(db_path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET fields = '{\"bot\":\"rewritten\"}' WHERE id = 2")
    prev = GENESIS
    for event_id, t, type_, text in db.execute(
            "SELECT id, time, type, fields FROM audit ORDER BY id").fetchall():
        h = link_hash(prev, event_id, t, type_, text)
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, event_id))
        prev = h
    db.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{prev}@{EVENTS}",))
    db.commit()
    db.close()
    storage, log = reopen(db_path)
    assert log.verify().intact  # the documented limit
    report = log.verify(anchor)
    storage.close()
    assert [(b.event_id, b.reason) for b in report.breaks] == [(EVENTS, "anchor")]


def test_expect_head_must_be_a_head(db_path):
    storage, log = reopen(db_path)
    for bad in ("abc@1", "0" * 64, f"{'0' * 64}@x", f"{'z' * 64}@1"):
        with pytest.raises(ValueError, match="HASH@ID|not hex"):
            log.verify(bad)
    storage.close()


def test_start_check_audits_a_break_once_and_keeps_it_visible(db_path, caplog):
    tamper(db_path, "DELETE FROM audit WHERE id = 3")
    storage, log = reopen(db_path)
    with caplog.at_level("ERROR", logger="mwiproxy.audit"):
        log.check_at_start()
    assert "chain broken at event 3: deleted" in caplog.text
    reported = log.query(types=[audit.AUDIT_CHAIN_BROKEN])
    assert [(e.event_id, e.fields["broken_id"], e.fields["reason"]) for e in reported] == \
        [(EVENTS + 1, 3, "deleted")]
    storage.close()
    # the next start finds the same break, already reported: logged, not audited again
    storage, log = reopen(db_path)
    log.check_at_start()
    assert len(log.query(types=[audit.AUDIT_CHAIN_BROKEN])) == 1
    report = log.verify()
    assert not report.intact
    assert [(b.event_id, b.reason, b.acknowledged_by) for b in report.breaks] == \
        [(3, "deleted", EVENTS + 1)]
    storage.close()


def test_truncation_stays_visible_after_new_events(db_path):
    tamper(db_path, f"DELETE FROM audit WHERE id = {EVENTS}")
    storage, log = reopen(db_path)
    log.check_at_start()
    log.emit(audit.BOT_CREATE, bot="later")
    report = log.verify()
    storage.close()
    # the new events chain onto the recorded head, not onto the row left last
    assert [(b.event_id, b.reason, b.acknowledged_by) for b in report.breaks] == \
        [(EVENTS, "deleted", EVENTS + 1)]


def test_appended_forgery_stays_visible_after_the_start_check(db_path):
    last = row(db_path, EVENTS)
    forged = link_hash(last[5], EVENTS + 1, last[1], "bot.join", "{}")
    tamper(db_path, FORGE,
           args=(EVENTS + 1, last[1], "bot.join", "{}", last[5], forged))
    storage, log = reopen(db_path)
    log.check_at_start()
    report = log.verify()
    storage.close()
    # the report event links to the recorded head, past the forged event
    assert [(b.event_id, b.reason) for b in report.breaks] == [(EVENTS + 2, "inserted")]
    assert report.breaks[0].acknowledged_by == EVENTS + 2
    assert report.reported == [(EVENTS + 2, [EVENTS + 1])]


def test_deleted_head_is_reported_and_stays_reported(db_path):
    tamper(db_path, "DELETE FROM meta WHERE key = 'audit_head'")
    assert first_break(db_path) == (EVENTS, "head_missing")
    storage, log = reopen(db_path)
    log.check_at_start()
    report = log.verify()
    storage.close()
    assert report.breaks == [] and not report.intact
    assert report.reported == [(EVENTS + 1, [EVENTS])]


def test_missing_and_altered_triggers_are_audited_and_restored(db_path):
    db = sqlite3.connect(db_path)
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT 1; END")
    db.commit()
    db.close()
    storage, log = reopen(db_path)
    report = log.check_at_start()
    assert report.intact
    (ev,) = log.query(types=[audit.AUDIT_TRIGGERS_MISSING])
    assert sorted(ev.fields["triggers"]) == ["audit_no_delete", "audit_no_update (altered)"]
    for sql in ("DELETE FROM audit", "UPDATE audit SET type = 'x'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            storage._db.execute(sql)
    storage.close()
    storage, log = reopen(db_path)
    assert storage.audit_guards_missing() == []
    storage.close()


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, type TEXT NOT NULL,
    fields TEXT NOT NULL);
CREATE INDEX audit_time ON audit (time);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def test_migration_of_a_pre_chain_database(tmp_path):
    path = str(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    for i in range(4):  # as the code before the chain wrote them
        db.execute("INSERT INTO audit (time, type, fields) VALUES (?, ?, ?)",
                   (1_700_000_000.5 + i, "bot.join", json.dumps({"bot": f"b{i}"}, sort_keys=True)))
    db.commit()
    db.close()
    storage, log = reopen(path)
    report = log.verify()
    assert report.intact and report.events == 5
    (ev,) = log.query(types=[audit.AUDIT_CHAIN_MIGRATED])
    assert ev.event_id == 5
    assert ev.fields["chained"] == 4 and ev.fields["genesis"] == GENESIS
    assert log.query()[0].fields == {"bot": "b0"}  # the old rows read as before
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        storage._db.execute("UPDATE audit SET type = 'x'")
    log.emit(audit.BOT_CREATE, bot="after")
    log.close()
    storage.close()
    storage, log = reopen(path)  # opened again: nothing more to migrate
    assert log.verify().intact and log.verify().events == 6
    assert len(log.query(types=[audit.AUDIT_CHAIN_MIGRATED])) == 1
    storage.close()
    tamper(path, "UPDATE audit SET fields = '{\"bot\":\"bx\"}' WHERE id = 2")
    assert first_break(path) == (2, "edited")


def test_appends_from_two_processes_stay_one_chain(tmp_path):
    path = str(tmp_path / "state.db")
    one, two = SQLiteStorage(path), SQLiteStorage(path)
    ids = [one.append_audit_batch([(1.0, "a", {})]),
           two.append_audit_batch([(2.0, "b", {}), (2.5, "b2", {})]),
           one.append_audit_batch([(3.0, "c", {})]), two.append_audit_batch([(4.0, "d", {})])]
    assert ids == [[1], [2, 3], [4], [5]]
    report = audit.AuditLog(one).verify()
    assert report.intact and report.events == 5
    one.close()
    two.close()


ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,))


def test_audit_verify_api(tmp_path, db_path):
    storage = SQLiteStorage(db_path)
    cas = AuthoritySet.load_or_create(tmp_path / "ca", "example.local")
    svc = AuthService(cluster="example.local", storage=storage, cas=cas, databases=[])
    res = svc.call("audit_verify", ADMIN, {})
    assert res["intact"] and res["events"] == EVENTS and res["head"].endswith(f"@{EVENTS}")
    assert svc.call("audit_verify", ADMIN, {"expect_head": res["head"]})["intact"]
    with pytest.raises(BadRequest, match="HASH@ID"):
        svc.call("audit_verify", ADMIN, {"expect_head": "nope"})
    with pytest.raises(AccessDenied):
        svc.call("audit_verify", Identity(user="bot-x", usage=()), {})
    storage.close()


def test_a_forged_break_report_acknowledges_nothing(db_path):
    # an attacker writes their own "already reported" event to quiet the next start
    tamper(db_path, "DELETE FROM audit WHERE id = 3",
           FORGE,
           args=(EVENTS + 1, 1.0, audit.AUDIT_CHAIN_BROKEN, '{"broken_ids":[3]}', GENESIS,
                 "0" * 64))
    storage, log = reopen(db_path)
    report = log.check_at_start()
    assert [(b.event_id, b.reason, b.acknowledged_by) for b in report.breaks] == \
        [(3, "deleted", None), (EVENTS + 1, "edited", None), (EVENTS + 1, "inserted", None),
         (EVENTS + 1, "appended", None)]
    (real,) = [e for e in log.query(types=[audit.AUDIT_CHAIN_BROKEN])
               if e.event_id != EVENTS + 1]
    assert real.fields["broken_ids"] == [3, EVENTS + 1]
    storage.close()
