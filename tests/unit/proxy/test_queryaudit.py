"""proxy/queryaudit.py: the tap's records become audit events with redaction, the
session's parameter policy and result summaries; a malformed message asks for the cut;
drops are audited once; query events stay out of the process log."""

from __future__ import annotations

import logging
import os
from typing import Any

from mwiproxy._native import pgaudit_py
from mwiproxy.auth import audit_writer
from mwiproxy.proxy.queryaudit import QueryAudit, QueryAuditPolicy
from tests.unit.native import pgauditkit as kit

WHO = {"session": "abc", "user": "alice", "db_user": "alice", "db_name": "db"}


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, fields))

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [f for t, f in self.events if t == type_]


def _audit(parameters: str = "hash") -> tuple[QueryAudit, Sink]:
    sink = Sink()
    return QueryAudit(sink, WHO, QueryAuditPolicy(True, parameters), key=b"k"), sink


def _feed(qa: QueryAudit, chunks: list[kit.Chunk]) -> None:
    tap = pgaudit_py.Tap()
    kit.run(tap, chunks)
    qa.on_records(tap.records)


def test_simple_query_and_masked_password():
    qa, sink = _audit()
    _feed(qa, [(0, kit.query("ALTER ROLE bob WITH PASSWORD 'hunter2'")),
               (1, kit.complete("ALTER ROLE") + kit.RFQ)])
    [ev] = sink.of("db.session.query")
    assert ev["query"] == "ALTER ROLE bob WITH PASSWORD '****'" and ev["query_redacted"]
    assert ev["command_tag"] == "ALTER ROLE" and ev["status"] == "ok" and ev["rows"] == 0
    assert ev["session"] == "abc" and ev["db_user"] == "alice"


def test_extended_execute_carries_statement_and_parameters_per_policy():
    for mode, expect in (("hash", "hmac-sha256:"), ("plain", "7"), ("omit", None)):
        qa, sink = _audit(mode)
        _feed(qa, [(0, kit.parse("s", "select $1") + kit.bind("p", "s", [b"7", None])
                    + kit.execute("p") + kit.SYNC),
                   (1, kit.msg(b"1") + kit.msg(b"2") + kit.row(b"7") + kit.complete("SELECT 1")
                    + kit.RFQ)])
        [q] = sink.of("db.session.query")
        assert q["query"] == "select $1" and q["statement_name"] == "s" and q["rows"] == 1
        if expect is None:
            assert "parameters" not in q
        else:
            assert q["parameters"][0].startswith(expect) and q["parameters"][1] is None
        assert sink.of("db.session.postgres.statements.parse")[0]["query"] == "select $1"
        assert sink.of("db.session.postgres.statements.execute")[0]["portal_name"] == "p"


def test_failed_statement_and_skipped_rest():
    qa, sink = _audit()
    _feed(qa, [(0, kit.parse("", "selec") + kit.bind("", "", []) + kit.execute() + kit.SYNC),
               (1, kit.error("42601", "syntax error") + kit.RFQ)])
    [f] = sink.of("db.session.query.failed")
    assert f["sqlstate"] == "42601" and f["error"] == "syntax error" and f["query"] == "selec"
    assert [e["status"] for e in sink.of("db.session.query")] == ["skipped"]


def test_malformed_asks_for_the_cut_and_drops_are_audited():
    qa, sink = _audit()
    cut: list[str] = []
    qa.on_malformed = cut.append
    _feed(qa, [(0, b"Q\0\0\0\1")])
    assert cut == ["bad message length"]
    assert sink.of("db.session.malformed_packet")[0]["side"] == "client"
    qa.ended(3)
    assert sink.of("audit.query.dropped") == [{**WHO, "count": 3}]


def test_query_events_are_not_mirrored_in_the_process_log(caplog):
    with caplog.at_level(logging.INFO, logger="mwiproxy.audit"):
        audit_writer.log_event((0.0, "db.session.query", {"query": "secret"}), 1)
        audit_writer.log_event((0.0, "db.session.query", {"query": "secret", "session": "s"}),
                               None, "audit queue full")
        audit_writer.log_event((0.0, "db.session.end", {"reason": "eof"}), 2)
    assert "audit queue full" in caplog.text
    assert all("secret" not in str(getattr(r, "event", "")) for r in caplog.records)
    assert len(caplog.records) == 2


def test_the_parameter_key_is_the_clusters_and_survives_a_restart(open_storage):
    """Digests compare across restarts and cluster processes: the HMAC key is made once
    and kept in the storage (both backends)."""
    from mwiproxy.auth.rbac import QueryAuditPolicy as Policy
    from mwiproxy.proxy.queryaudit import param_key

    first, second = open_storage(), open_storage()
    try:
        key = param_key(first)
        assert len(key) == 32 and param_key(second) == key == param_key(first)
    finally:
        first.close()
        second.close()
    reopened = open_storage()
    try:
        assert param_key(reopened) == key
    finally:
        reopened.close()
    a = QueryAudit(lambda *a, **k: None, {}, Policy(), key=key)
    b = QueryAudit(lambda *a, **k: None, {}, Policy(), key=os.urandom(32))
    assert a._key == key and b._key != key
