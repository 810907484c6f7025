"""What only the PostgreSQL storage has: several instances (processes) on one database
racing the atomic steps, schema versions, the append-only triggers, connection loss."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from mwiproxy.auth.audit_writer import AuditWriter
from mwiproxy.auth.storage.base import BotRecord, StoreClosed, TokenRecord, TokenUnusable
from mwiproxy.auth.storage.chain import verify_chain
from mwiproxy.auth.storage.pg_conn import StorageUnavailable
from mwiproxy.auth.storage.pg_schema import MIGRATIONS, SchemaTooNew
from mwiproxy.auth.storage.postgres import PostgresStorage

NOW = 1_800_000_000.0


@pytest.fixture
def conn_string(storage_server) -> str:  # type: ignore[no-untyped-def]
    return storage_server().fresh()


@pytest.fixture
def pair(conn_string):  # type: ignore[no-untyped-def]
    """Two storages on one database: two cluster processes' view of it."""
    one, two = PostgresStorage(conn_string), PostgresStorage(conn_string)
    yield one, two
    one.close()
    two.close()


def sql(conn_string: str, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conn_string, autocommit=True) as conn:
        cur = conn.execute(text, args)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) at once, as far as threads go: every call waits on one barrier."""
    barrier = threading.Barrier(n)

    def go(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except TokenUnusable as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def test_only_one_generation_bump_wins_across_instances(pair):
    one, two = pair
    one.create_bot(BotRecord("b1", ["dev"], 1, {}, NOW, NOW))
    for gen in range(1, 11):
        results = race(4, lambda i, gen=gen: (one, two)[i % 2].bump_generation(
            "b1", gen, NOW, {"generation": gen + 1, "by": i}))
        assert results.count(True) == 1, (gen, results)
    assert two.get_bot("b1").generation == 11


def test_a_token_is_used_once_across_instances(pair):
    one, two = pair
    for k in range(10):
        one.create_token(TokenRecord(f"{k:064x}", "bot", "b1", NOW + 60, NOW))
        results = race(4, lambda i, k=k: (one, two)[i % 2].consume_token(f"{k:064x}", NOW))
        used = [r for r in results if isinstance(r, TokenRecord)]
        assert len(used) == 1, results
        assert all("already used" in str(r) for r in results if r not in used)


def test_audit_appends_from_two_instances_never_fork_the_chain(pair):
    one, two = pair
    per_thread, threads = 25, 4

    def append(i: int) -> list[int]:
        store = (one, two)[i % 2]
        ids = []
        for k in range(per_thread):
            ids += store.append_audit_batch([(NOW + k, "t", {"by": i, "k": k}),
                                             (NOW + k, "t2", {"by": i})])
        return ids

    ids = [i for got in race(threads, append) for i in got]
    assert sorted(ids) == list(range(1, threads * per_thread * 2 + 1))
    tail, events = one.audit_chain()
    report = verify_chain(tail, events)
    assert report.intact, report.breaks
    assert report.events == len(ids) and tail.head is not None
    assert tail.head.event_id == len(ids)


def test_schema_version_is_recorded_and_a_newer_one_refused(conn_string):
    PostgresStorage(conn_string).close()
    PostgresStorage(conn_string).close()  # a second start migrates nothing
    assert sql(conn_string, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    sql(conn_string, "UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNew, match="run a newer mwiproxy"):
        PostgresStorage(conn_string)


def test_the_audit_table_is_append_only_and_missing_guards_come_back(conn_string):
    store = PostgresStorage(conn_string)
    store.append_audit_batch([(NOW, "a", {}), (NOW + 1, "b", {})])
    store.close()
    for statement in ("UPDATE audit SET type = 'x'", "DELETE FROM audit",
                      "TRUNCATE audit"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            sql(conn_string, statement)
    sql(conn_string, "DROP TRIGGER audit_no_delete ON audit")
    sql(conn_string, "ALTER TABLE audit DISABLE TRIGGER audit_no_update")
    store = PostgresStorage(conn_string)
    try:
        assert sorted(store.audit_guards_missing()) == ["audit_no_delete",
                                                        "audit_no_update (altered)"]
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            sql(conn_string, "DELETE FROM audit")
    finally:
        store.close()


def test_a_superuser_bypassing_the_triggers_still_breaks_the_chain(conn_string):
    store = PostgresStorage(conn_string)
    try:
        store.append_audit_batch([(NOW + i, "e", {"i": i}) for i in range(5)])
        with psycopg.connect(conn_string, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # triggers off
            conn.execute("UPDATE audit SET fields = '{\"i\":99}' WHERE id = 3")
            conn.execute("DELETE FROM audit WHERE id = 5")
        tail, events = store.audit_chain()
        reasons = {(b.event_id, b.reason) for b in verify_chain(tail, events).breaks}
        assert (3, "edited") in reasons and (5, "truncated") in reasons
    finally:
        store.close()


def _cut_connections(conn_string: str) -> int:
    return len(sql(conn_string,
                   "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'mwiproxy' AND datname = current_database()"))


def test_a_lost_connection_retries_reads_and_fails_writes_clearly(conn_string):
    store = PostgresStorage(conn_string)
    try:
        store.set_meta("k", "v")
        assert _cut_connections(conn_string) == 2  # the storage's and the audit's
        assert store.get_meta("k") == "v"  # retried on a new connection
        _cut_connections(conn_string)
        with pytest.raises(StorageUnavailable, match="may or may not have been applied"):
            store.set_meta("k", "w")
        store.set_meta("k", "w")  # the next write reconnects
        assert store.get_meta("k") == "w"
    finally:
        store.close()


def test_the_audit_writer_retries_over_a_lost_connection(conn_string):
    store = PostgresStorage(conn_string)
    writer = AuditWriter(store.append_audit_batch, backoff=(0.01, 0.05), gather=0.0)
    try:
        assert writer.put("before", {}) and writer.flush(30)
        _cut_connections(conn_string)
        assert writer.put("after", {}) and writer.flush(30)
        assert writer.stats.failures >= 1 and writer.stats.written == 2
        tail, events = store.audit_chain()
        chained = list(events)
        assert verify_chain(tail, chained).intact
        assert [e.type for e in chained] == ["before", "after", "audit.resumed"]
    finally:
        writer.close(5)
        store.close()
    with pytest.raises(StoreClosed):
        store.append_audit_batch([(NOW, "late", {})])
