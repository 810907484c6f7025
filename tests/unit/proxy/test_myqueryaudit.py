"""proxy/myqueryaudit.py: the MySQL tap's records become audit events (results, ERR
fields, prepared statements' text on EXECUTE, COM_INIT_DB, redaction, untracked)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import myaudit_py
from mwiproxy.proxy.myqueryaudit import MySQLQueryAudit
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.wire.mysqlparams import execute_params
from tests.unit.native import myauditkit as kit
from tests.unit.proxy.test_queryaudit import WHO, Sink


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
