"""Locks made by one cluster process reach the sessions of another on the same
PostgreSQL storage: NOTIFY, or polling while the listening connection is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.lock_feed import LockFeed
from mwiproxy.auth.locks import LockService
from mwiproxy.auth.storage.base import LockRecord, Storage
from mwiproxy.auth.storage.pg_locks import LockNotices
from mwiproxy.auth.storage.postgres import PostgresStorage
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.devkit.ports import free_port


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Heard:
    """A lock listener that remembers what it was told and lets a test wait for it."""

    def __init__(self) -> None:
        self.locks: list[LockRecord] = []
        self._cond = threading.Condition()

    def __call__(self, lock: LockRecord) -> None:
        with self._cond:
            self.locks.append(lock)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.locks) >= n, timeout)
            return [lock.target for lock in self.locks]


class Process:
    """One cluster process's view: its storage, lock service, listener and feed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.audit = audit.AuditLog(storage)
        self.locks = LockService(storage, self.audit)
        self.heard = Heard()
        self.locks.on_lock(self.heard)
        self.feed = LockFeed.start_for(self.locks, storage)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.audit.close()
        self.storage.close()


@pytest.fixture
def two(storage_server) -> Iterator[tuple[Process, Process]]:  # type: ignore[no-untyped-def]
    conn_string = storage_server().fresh()
    PostgresStorage(conn_string).close()  # migrated once, before the two start
    a, b = Process(PostgresStorage(conn_string)), Process(PostgresStorage(conn_string))
    yield a, b
    a.close()
    b.close()


def test_a_lock_made_by_one_process_is_heard_once_by_each(two):
    a, b = two
    a.locks.create("bot", "one", message="incident")
    assert b.heard.wait_for(1) == ["one"]
    b.locks.create("user", "two")
    assert a.heard.wait_for(2) == ["one", "two"]
    assert b.heard.wait_for(2) == ["one", "two"]
    # neither the maker's feed nor a later refresh tells a listener twice
    assert a.locks.refresh() == [] and b.locks.refresh() == []
    assert [lk.target for lk in a.heard.locks] == ["one", "two"]


def test_a_lost_listening_connection_is_replaced_and_no_lock_is_missed(two):
    a, b = two
    assert a.feed is not None and b.feed is not None
    notices = [a.feed._notices, b.feed._notices]  # type: ignore[attr-defined]
    assert wait_until(lambda: all(n.listening for n in notices))
    with psycopg.connect(b.storage._conn_string, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'LISTEN mwiproxy_locks' AND datname = current_database()"
        ).fetchall()
    assert len(killed) == 2  # a's and b's listening connections
    a.locks.create("role", "after-the-cut")  # its NOTIFY may reach nobody
    assert b.heard.wait_for(1) == ["after-the-cut"]
    a.locks.create("role", "listening-again")
    assert b.heard.wait_for(2) == ["after-the-cut", "listening-again"]
    assert wait_until(lambda: all(n.listening for n in notices))


def test_without_notices_the_feed_polls_the_locks_table(two, caplog):
    """A LISTEN connection that cannot be opened (here: nothing listens on that port)
    leaves the feed polling every POLL seconds."""
    a, b = two
    unreachable = LockNotices(f"host=127.0.0.1 port={free_port()} user=x dbname=x")
    heard = Heard()
    c = LockService(b.storage, b.audit)
    c.on_lock(heard)
    feed = LockFeed(c, unreachable)
    feed._thread.start()
    try:
        a.locks.create("bot", "polled")
        assert heard.wait_for(1) == ["polled"]
        assert not unreachable.listening
        assert "lock notices unavailable" in caplog.text
    finally:
        feed.close()


def test_sqlite_storage_has_no_other_process_and_no_feed(tmp_path):
    p = Process(SQLiteStorage(str(tmp_path / "state.db")))
    try:
        assert p.feed is None
        p.locks.create("bot", "solo")
        assert [lk.target for lk in p.heard.locks] == ["solo"]
    finally:
        p.close()
