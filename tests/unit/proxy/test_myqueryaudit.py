"""proxy/myqueryaudit.py: the MySQL tap's records become audit events (results, ERR
fields, prepared statements' text on EXECUTE, COM_INIT_DB, redaction, untracked); the
commands that succeeded, one `db.session.query` event per drain (flattened here, one
dict per command, as mwictl sessions shows them), in order with the other events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import myaudit_py
from mwiproxy.auth.audit import AuditLog
from mwiproxy.auth.storage.base import EncodedFields
from mwiproxy.auth.storage.chain import fields_text
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.cli.mwictl_sessions import commands_of
from mwiproxy.proxy.myqueryaudit import CACHED_TEXT, MySQLQueryAudit, StatementTexts
from mwiproxy.proxy.queryaudit import MAX_COMMANDS, QueryAuditPolicy, RedactedTexts
from mwiproxy.wire.mysqlparams import execute_params
from mwiproxy.wire.mysqlredact import redact_statement
from tests.unit.native import myauditkit as kit
from tests.unit.proxy.test_queryaudit import WHO
from tests.unit.proxy.test_queryaudit import Sink as _Sink


class Sink(_Sink):
    """Events as emitted, `of` flattening the batched query events (commands_of)."""

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [c for f in super().of(type_) for c in commands_of(f)]


def _events(chunks: list[kit.Chunk]) -> Sink:
    sink = Sink()
    qa = MySQLQueryAudit(sink, WHO, QueryAuditPolicy(True, "hash"), key=b"k")
    tap = myaudit_py.Tap()
    kit.run(tap, chunks)
    qa.on_records(tap.records)
    return sink


def test_query_results_and_failures():
    sink = _events([(0, kit.query(b"UPDATE t SET a = 1")), (1, kit.ok(4)),
                    (0, kit.query(b"select * from nope")),
                    (1, kit.err(1146, b"42S02", b"Table 'nope' doesn't exist"))])
    [ok] = sink.of("db.session.query")
    assert ok["command"] == "COM_QUERY" and ok["rows"] == 4 and ok["status"] == "ok"
    assert ok["query"] == "UPDATE t SET a = 1" and ok["session"] == "abc"
    [bad] = sink.of("db.session.query.failed")
    assert (bad["error_code"], bad["sqlstate"], bad["status"]) == (1146, "42S02", "error")
    assert bad["error"] == "Table 'nope' doesn't exist"


def test_execute_carries_the_prepared_text_and_close_forgets_it():
    sink = _events([(0, kit.prepare(b"SELECT ?")), (1, kit.prepare_ok(9, 1, 1)),
                    (0, kit.execute(9)), (1, kit.result_set([b"1", b"2"])),
                    (0, kit.close(9)), (0, kit.execute(9)), (1, kit.ok())])
    [prep] = sink.of("db.session.mysql.statements.prepare")
    assert prep["statement_id"] == 9 and prep["query"] == "SELECT ?"
    first, second = sink.of("db.session.query")
    assert first["command"] == "COM_STMT_EXECUTE" and first["query"] == "SELECT ?"
    assert first["rows"] == 2 and "query" not in second
    assert sink.of("db.session.mysql.statements.close") == [
        {**WHO, "command": "COM_STMT_CLOSE", "statement_id": 9}]


def test_init_db_and_redaction():
    sink = _events([(0, kit.init_db(b"shop")), (1, kit.ok()),
                    (0, kit.query(b"alter user u identified by 's3cret'")),
                    (1, kit.err(1227, b"42000", b"Access denied"))])
    [init] = sink.of("db.session.query")
    assert init["command"] == "COM_INIT_DB" and init["schema"] == "shop"
    [bad] = sink.of("db.session.query.failed")
    assert bad["query_redacted"] is True and "s3cret" not in str(sink.events)


def test_unanswered_commands_end_unfinished():
    sink = _events([(0, kit.query(b"select sleep(100)"))])
    [ev] = sink.of("db.session.query")
    assert ev["status"] == "unfinished"


def _plain(chunks: list[kit.Chunk]) -> Sink:
    sink = Sink()
    qa = MySQLQueryAudit(sink, WHO, QueryAuditPolicy(True, "plain"), key=b"k")
    tap = myaudit_py.Tap()
    kit.run(tap, chunks)
    qa.on_records(tap.records)
    return sink


def test_execute_parameters_per_policy_with_remembered_types():
    chunks = [(0, kit.prepare(b"SELECT ?, ?")), (1, kit.prepare_ok(4, 1, 2)),
              (0, kit.execute(4, kit.long_and_string(-7, b"pqz"))), (1, kit.ok()),
              (0, kit.execute(4, kit.long_and_string(8, b"x" * 300, bound=False))),
              (1, kit.ok())]
    first, second = _plain(chunks).of("db.session.query")
    assert first["parameters"] == ["-7", "pqz"] and "parameters_truncated" not in first
    assert second["parameters"] == ["8", "x" * 256] and second["parameters_truncated"]
    hashed = _events(chunks).of("db.session.query")
    assert hashed[0]["parameters"][1].startswith("hmac-sha256:")
    assert "pqz" not in str(hashed)


def test_execute_parameters_bounded_and_unknown():
    # a statement the audit never saw prepared: no parameters; NULL bitmap honoured
    sink = _plain([(0, kit.execute(5, b"\x00\x01\x08\x00" + b"\x01" * 8)), (1, kit.ok()),
                   (0, kit.prepare(b"SELECT ?")), (1, kit.prepare_ok(6, 1, 1)),
                   (0, kit.execute(6, b"\x01\x01\x08\x00")), (1, kit.ok()),
                   (0, kit.execute(6, b"\x00\x00\x01")), (1, kit.ok())])
    unknown, null, cut = sink.of("db.session.query")
    assert "parameters" not in unknown
    assert null["parameters"] == [None]
    assert cut["parameters"] == [] and cut["parameters_truncated"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 12), st.one_of(st.none(), st.binary(max_size=24)))
def test_execute_params_never_fail_and_stay_in_bounds(block, count, types):
    values, _, cut = execute_params(block, count, types)
    assert len(values) <= count and (cut or len(values) == count)
    assert sum(len(v) for v in values if v is not None) <= 4 * len(block) + 64 * count


def test_a_drains_commands_are_one_event_in_order_with_the_others():
    """Successes batch into one event per drain; a failure (or any other event) in
    between ends the batch before it, so the events keep the client's order."""
    sink = _events([(0, kit.query(b"select 1")), (1, kit.ok()),
                    (0, kit.query(b"select 2")), (1, kit.ok()),
                    (0, kit.query(b"select nope")), (1, kit.err(1054, b"42S22", b"x")),
                    (0, kit.prepare(b"SELECT ?")), (1, kit.prepare_ok(3, 0, 1)),
                    (0, kit.query(b"select 3")), (1, kit.ok()),
                    (0, kit.init_db(b"shop")), (1, kit.ok())])
    shape = [(t, f.get("count", f.get("query"))) for t, f in sink.events]
    assert shape == [("db.session.query", 2), ("db.session.query.failed", "select nope"),
                     ("db.session.mysql.statements.prepare", "SELECT ?"),
                     ("db.session.query", 2)]
    assert [c.get("query", c.get("schema")) for c in sink.of("db.session.query")] == [
        "select 1", "select 2", "select 3", "shop"]


def test_a_drain_is_stored_as_few_events_the_chain_verifies(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "state.db"))
    log = AuditLog(storage)
    qa = MySQLQueryAudit(log.emit, WHO, QueryAuditPolicy(True, "hash"), key=b"k",
                         emit_many=log.emit_many)
    n = MAX_COMMANDS + 7
    tap = myaudit_py.Tap()
    for i in range(n):  # pipelined: every request first, then the answers
        tap.feed(0, kit.query(b"select %d" % i), i)
    qa.on_records(tap.records)  # the requests: nothing answered yet
    tap.records.clear()
    for i in range(n):
        tap.feed(1, kit.ok(i), n + i)
    qa.on_records(tap.records)
    assert log.flush(60)
    stored = log.query(session=WHO["session"], types=["db.session.query"])
    assert [e.fields["count"] for e in stored] == [MAX_COMMANDS, 7]
    flat = [c for e in stored for c in commands_of(e.fields)]
    assert qa.events == n == len(flat)
    assert [(c["query"], c["rows"], c["session"]) for c in flat] == [
        (f"select {i}", i, WHO["session"]) for i in range(n)]
    assert log.verify().intact
    log.close()
    storage.close()


@pytest.mark.parametrize("parameters", ["plain", "hash", "omit"])
def test_an_events_text_is_the_canonical_encoding_of_its_fields(parameters):
    got: list[EncodedFields] = []
    qa = MySQLQueryAudit(Sink(), {**WHO, "session_id": 7, "remote": "ré\n\"x"},
                         QueryAuditPolicy(True, parameters), key=b"k",
                         emit_many=lambda type_, many: got.extend(many))
    tap = myaudit_py.Tap()
    kit.run(tap, [(0, kit.prepare("SELECT ?, 'é'".encode())), (1, kit.prepare_ok(4, 1, 2)),
                  (0, kit.execute(4, kit.long_and_string(-7, b"\xff"))), (1, kit.ok(1)),
                  (0, kit.query(b"select 1")), (1, kit.result_set([b"1"]))])
    qa.on_records(tap.records)
    (event,) = got
    assert event.session == WHO["session"]
    assert fields_text(event.as_dict()) == event.text
    assert event.as_dict()["count"] == 2 and event.as_dict()["session_id"] == 7


def test_session_fields_may_not_collide_with_the_batch_fields():
    with pytest.raises(ValueError, match="commands"):
        MySQLQueryAudit(Sink(), {**WHO, "count": 1}, QueryAuditPolicy(True, "hash"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40) | st.text(max_size=20).map(str.encode),
                          st.integers(0, 2 ** 64 - 1), st.integers(0, 10 ** 13),
                          st.booleans()), min_size=1, max_size=6))
def test_an_answered_querys_text_is_its_fields_canonically(queries):
    """A COM_QUERY's stored text (spliced from a per-statement cache) is the canonical
    encoding of what a per-command dict says: any text, row count and duration."""
    got: list[EncodedFields] = []
    qa = MySQLQueryAudit(Sink(), WHO, QueryAuditPolicy(True, "hash"), key=b"k",
                         emit_many=lambda type_, many: got.extend(many))
    tap = myaudit_py.Tap()
    for sql, affected, took, again in queries:
        for _ in range(1 + again):  # the same text twice: the cached fields
            tap.feed(0, kit.query(sql), 0)
            tap.feed(1, kit.ok(affected), took)
    qa.on_records(tap.records)
    (event,) = got
    assert fields_text(event.as_dict()) == event.text
    flat = commands_of(event.as_dict())
    want = [{**WHO, "command": "COM_QUERY", "rows": affected, "bytes": 0, "status": "ok",
             "duration_ms": round(took / 1e6, 3), "truncated": False, "query_len": len(sql),
             **dict(zip(("query", "query_redacted"),
                        redact_statement(sql.decode("utf-8", "replace")), strict=True))}
            for sql, affected, took, again in queries for _ in range(1 + again)]
    assert flat == want


def test_the_statement_cache_is_bounded_in_entries_and_in_text():
    cache = StatementTexts(RedactedTexts(redact_statement), size=4)
    for i in range(10):
        cache((6, b"select %d" % i), False)
    assert 0 < len(cache.cache) <= 4
    long = b"x" * (CACHED_TEXT + 1)
    fields, inner, cut = cache((len(long), long), False)
    assert fields["query"] == long.decode() and (long, len(long), False) not in cache.cache
