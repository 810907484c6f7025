"""The audit writer: emit returns at once and never waits on the store; events are stored
in batches, in emit order, as one strict hash chain; a locked or full database keeps every
event and recovers by itself; a full queue drops, counts and then audits what it dropped;
close stores what is queued."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.storage import chain
from mwiproxy.auth.storage.base import EncodedFields
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.devkit.topology import wait_for

WIDE = 60.0  # bounds for waits on events: far beyond any loaded machine


class GatedStorage(SQLiteStorage):
    """A store whose appends wait at a gate (a writer stalled for as long as a test
    likes); `entered` is set when an append is waiting there."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append_audit_batch(self, events: Sequence[tuple[float, str, dict[str, Any]]]
                           ) -> list[int]:
        self.entered.set()
        assert self.gate.wait(WIDE)
        return super().append_audit_batch(events)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state.db")


def stored(log: audit.AuditLog, *types: str) -> list[audit.AuditEvent]:
    assert log.flush(WIDE)
    return log.query(types=list(types) or None, limit=1_000_000)


def in_thread(fn, *args) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_concurrent_emits_from_threads_and_the_loop_form_one_ordered_chain(path):
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    per_source = 300

    def from_thread(name: str) -> None:
        for i in range(per_source):
            log.emit("test.event", source=name, n=i)

    async def from_loop() -> None:
        for i in range(per_source):
            log.emit("test.event", source="loop", n=i)
            if i % 50 == 0:
                await asyncio.sleep(0)

    threads = [in_thread(from_thread, f"thread-{k}") for k in range(4)]
    asyncio.run(from_loop())
    for t in threads:
        t.join(WIDE)
        assert not t.is_alive()
    events = stored(log, "test.event")
    assert [e.event_id for e in events] == list(range(1, 5 * per_source + 1))
    by_source: dict[str, list[int]] = {}
    for e in events:
        by_source.setdefault(e.fields["source"], []).append(e.fields["n"])
    assert by_source == {s: list(range(per_source)) for s in by_source} and len(by_source) == 5
    times = [e.time for e in events]
    assert times == sorted(times)  # taken in queue order
    report = log.verify()
    assert report.intact and report.events == 5 * per_source
    log.close()
    storage.close()


def test_close_stores_everything_queued(path):
    storage = GatedStorage(path)
    log = audit.AuditLog(storage)
    for i in range(50):
        log.emit("test.event", n=i)
    assert storage.entered.wait(WIDE)
    assert log.writer.pending == 50  # all held behind the stalled writer
    storage.gate.set()
    log.close()
    storage.close()
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    assert [e.fields["n"] for e in stored(log, "test.event")] == list(range(50))
    assert log.verify().intact
    log.close()
    storage.close()


def test_emit_does_not_wait_for_a_stalled_writer(path):
    storage = GatedStorage(path)
    log = audit.AuditLog(storage)

    async def emit_many() -> None:
        for i in range(2000):
            log.emit("test.event", n=i)

    log.emit("test.event", n=-1)
    assert storage.entered.wait(WIDE)  # the writer is stuck in the store from here on
    asyncio.run(asyncio.wait_for(emit_many(), WIDE))
    assert not log.flush(0)  # nothing of it could be stored yet
    storage.gate.set()
    assert len(stored(log, "test.event")) == 2001
    log.close()
    storage.close()


def test_a_locked_database_keeps_every_event_and_recovers_alone(path):
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    log.emit("test.event", n=0)
    assert log.flush(WIDE)
    other = sqlite3.connect(path, isolation_level=None)  # another process, say
    other.execute("BEGIN IMMEDIATE")
    for i in range(1, 20):
        log.emit("test.event", n=i)
    assert wait_for(lambda: log.writer.stats.failures >= 1, timeout=WIDE, step=0.05)
    assert "locked" in log.writer.stats.last_error
    # reads do not wait on the stalled append: it has a connection of its own
    reader = in_thread(storage.list_locks)
    reader.join(WIDE)
    assert not reader.is_alive()
    other.execute("ROLLBACK")
    other.close()
    events = stored(log, "test.event")
    assert [e.fields["n"] for e in events] == list(range(20))
    (resumed,) = stored(log, audit.AUDIT_RESUMED)
    assert resumed.fields["failed_attempts"] >= 1 and "locked" in resumed.fields["error"]
    assert log.verify().intact
    log.close()
    storage.close()


def test_a_full_disk_keeps_every_event_and_recovers_alone(path):
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    log.emit("test.event", n=0)
    assert log.flush(WIDE)
    appender = storage._audit._db  # the audit's own connection: cap its file size
    pages = appender.execute("PRAGMA page_count").fetchone()[0]
    appender.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(1, 6):
        log.emit("test.event", n=i, blob="x" * 20_000)  # needs new pages
    assert wait_for(lambda: log.writer.stats.failures >= 2, timeout=WIDE, step=0.05)
    assert "full" in log.writer.stats.last_error
    appender.execute("PRAGMA max_page_count = 1073741823")  # room again, no admin step
    events = stored(log, "test.event")
    assert [e.fields["n"] for e in events] == list(range(6))
    assert "full" in stored(log, audit.AUDIT_RESUMED)[0].fields["error"]
    report = log.verify()
    assert report.intact and report.events == 7
    log.close()
    storage.close()


def test_a_full_queue_drops_counts_and_audits_the_drop(path, caplog):
    storage = GatedStorage(path)
    log = audit.AuditLog(storage, max_pending=5)
    log.emit("test.first")
    assert storage.entered.wait(WIDE)  # the first batch is in the stalled writer
    for i in range(12):
        log.emit(audit.SESSION_END if i % 2 else audit.SESSION_START, n=i)
    assert log.writer.stats.dropped == 7
    # every dropped event is in the log in full
    dropped = [r for r in caplog.records if "audit queue full" in r.getMessage()]
    assert len(dropped) == 7 and dropped[-1].event["n"] == 11  # type: ignore[attr-defined]
    storage.gate.set()
    kept = stored(log, audit.SESSION_START, audit.SESSION_END)
    assert [e.fields["n"] for e in kept] == list(range(5))
    (overflow,) = stored(log, audit.AUDIT_OVERFLOW)
    assert overflow.fields["dropped"] == 7
    assert overflow.fields["types"] == {audit.SESSION_START: 3, audit.SESSION_END: 4}
    assert overflow.event_id > kept[-1].event_id
    assert log.verify().intact
    log.close()
    storage.close()


def test_events_that_json_cannot_encode_are_stored_as_text_and_the_log_goes_on(path):
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    log.emit("test.event", when=object.__new__(type("Odd", (), {"__str__": lambda s: "odd"})))
    cycle: list[object] = []
    cycle.append(cycle)
    log.emit("test.event", cycle=cycle)  # no JSON form at all: stored as its repr
    log.emit("test.event", n=1)
    odd, looped, last = (e.fields for e in stored(log, "test.event"))
    assert odd == {"when": "odd"} and last == {"n": 1}
    assert looped["unencodable_fields"] == "{'cycle': [[...]]}"
    assert log.verify().intact
    log.close()
    storage.close()


def test_a_store_closed_under_the_writer_stops_it_and_logs_what_it_held(path, caplog):
    """Closing the storage before the audit log (a wrong teardown order) must not leave
    the writer thread retrying forever: it stops and logs each event in full."""
    storage = GatedStorage(path)
    log = audit.AuditLog(storage)
    log.emit("test.event", n=0)
    assert storage.entered.wait(WIDE)  # the writer is inside the store
    log.emit("test.event", n=1)
    storage.close()
    with caplog.at_level("INFO", logger="mwiproxy.audit"):
        storage.gate.set()
        assert wait_for(lambda: log.writer._thread is None, timeout=WIDE)
    held = [r for r in caplog.records if "audit store closed" in r.getMessage()]
    assert len(held) == 2
    assert any("the audit log is closed" in r.getMessage() for r in caplog.records)
    assert not any("kept and retried" in r.getMessage() for r in caplog.records)
    assert not log.writer.put("test.event", {"n": 2})  # refused, logged, not queued
    log.close()


def _encoded(n: int, session: str = "s1") -> EncodedFields:
    return EncodedFields(chain.fields_text({"n": n, "session": session}), session)


def test_encoded_events_are_stored_as_given_in_order_with_their_session(path):
    """emit_many (a batch already encoded, one lock): stored byte for byte as a dict
    with the same fields would be, in queue order with the events around them, and
    found by their session."""
    storage = SQLiteStorage(path)
    log = audit.AuditLog(storage)
    log.emit("test.event", n=0, session="s1")
    log.emit_many("test.event", [_encoded(1), _encoded(2, "s2"), _encoded(3)])
    log.emit("test.event", n=4, session="s1")
    events = stored(log, "test.event")
    assert [e.fields["n"] for e in events] == [0, 1, 2, 3, 4]
    assert [e.fields["n"] for e in log.query(session="s1")] == [0, 1, 3, 4]
    assert log.verify().intact
    log.close()
    storage.close()


def test_encoded_events_beyond_a_full_queue_are_dropped_counted_and_logged_in_full(
        path, caplog):
    storage = GatedStorage(path)
    log = audit.AuditLog(storage, max_pending=3)
    log.emit("test.first")
    assert storage.entered.wait(WIDE)  # the first batch is in the stalled writer
    assert log.writer.put_many("db.session.query", [_encoded(i) for i in range(5)]) == 3
    assert log.writer.stats.dropped == 2
    dropped = [r for r in caplog.records if "audit queue full" in r.getMessage()]
    # query-audit events: only their session in the process log, even when dropped
    assert [r.event for r in dropped] == [  # type: ignore[attr-defined]
        {"id": None, "time": dropped[0].event["time"],  # type: ignore[attr-defined]
         "type": "db.session.query", "session": "s1"}] * 2
    storage.gate.set()
    assert [e.fields["n"] for e in stored(log, "db.session.query")] == [0, 1, 2]
    (overflow,) = stored(log, audit.AUDIT_OVERFLOW)
    assert overflow.fields["types"] == {"db.session.query": 2}
    log.close()
    storage.close()
    # after close: refused, each logged in full (not a query-audit type: every field)
    with caplog.at_level("INFO", logger="mwiproxy.audit"):
        assert log.writer.put_many("test.event", [_encoded(9)]) == 0
    (late,) = [r for r in caplog.records if "after the audit log closed" in r.getMessage()]
    assert late.event["n"] == 9 and late.event["session"] == "s1"  # type: ignore[attr-defined]


class Recorder:
    """An append that keeps the batches it was given (ids counted from 1)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Sequence[tuple[float, str, Any]]) -> list[int]:
        with self.lock:
            first = sum(map(len, self.batches)) + 1
            self.batches.append([type_ for _, type_, _ in batch])
            return list(range(first, first + len(batch)))

    def types(self) -> list[str]:
        with self.lock:
            return [t for b in self.batches for t in b]


def test_query_audit_events_wait_longer_for_company_and_any_other_event_ends_the_wait():
    from mwiproxy.auth.audit_writer import AuditWriter
    rec = Recorder()
    writer = AuditWriter(rec, gather=0.01, gather_queries=WIDE)
    try:
        assert writer.put("db.session.query", {"session": "s1", "count": 1})
        assert writer.put("db.session.query", {"session": "s1", "count": 2})
        # gathering queries (WIDE): nothing is written for a while, however slow the box
        threading.Event().wait(0.5)
        assert rec.types() == []
        assert writer.put("db.session.start", {"session": "s2"})
        assert wait_for(lambda: len(rec.types()) == 3, WIDE)
        assert rec.types() == ["db.session.query", "db.session.query", "db.session.start"]
        # the next batch of queries alone waits again
        assert writer.put("db.session.query", {"session": "s1", "count": 3})
        threading.Event().wait(0.3)
        assert len(rec.types()) == 3
        assert writer.flush(WIDE)  # a flush ends the wait at once
        assert rec.types()[-1] == "db.session.query"
    finally:
        writer.close(WIDE)


def test_an_urgent_event_left_behind_by_a_full_batch_is_not_held_by_the_query_wait():
    from mwiproxy.auth.audit_writer import AuditWriter
    rec = Recorder()
    gate, entered = threading.Event(), threading.Event()

    def slow(batch):  # type: ignore[no-untyped-def]
        entered.set()
        assert gate.wait(WIDE)
        return rec(batch)

    writer = AuditWriter(slow, gather=0.01, gather_queries=WIDE, max_batch=3)
    try:
        writer.put("db.session.start", {"n": 0})
        assert entered.wait(WIDE)  # the writer holds [start] at the gate
        # queued meanwhile: three queries (a full batch), then a refusal after them
        writer.put_many("db.session.query", [{"n": 1}, {"n": 2}, {"n": 3}])
        writer.put("db.session.rejected", {"why": "locked"})
        gate.set()
        # [query x3] goes as a full batch; the refusal left behind is written at GATHER,
        # not held for the queries' wait (WIDE)
        assert wait_for(lambda: len(rec.types()) == 5, WIDE / 2)
        assert rec.batches == [["db.session.start"], ["db.session.query"] * 3,
                               ["db.session.rejected"]]
    finally:
        writer.close(WIDE)
