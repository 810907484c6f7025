"""Reading one database session from the audit log: the storage's session filter (an
index lookup), the auth API's `audit` with `session`, and `mwictl sessions show` /
`mwictl audit --session` over events appended through the audit writer."""

from __future__ import annotations

import argparse
import json
import sqlite3
import uuid
from typing import Any

import pytest

from mwiproxy.auth import audit
from mwiproxy.auth.client import AuthClient
from mwiproxy.auth.errors import BadRequest
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.cli import mwictl_commands, mwictl_sessions
from mwiproxy.identity import oids
from mwiproxy.identity.certs import Identity

ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,))
WHO = {"user": "bot-example", "bot": "example", "db_service": "example-server",
       "db_user": "alice", "db_name": "example-db", "remote": "127.0.0.1:5000",
       "protocol": "postgres"}


def _session(svc: Any, sid: str, statements: list[dict[str, Any]], end: bool = True) -> None:
    svc.audit.emit(audit.SESSION_START, session=sid, session_id=1, roles=["example-role"],
                   success=True, **WHO)
    for fields in statements:
        kind = "db.session.query.failed" if "sqlstate" in fields else "db.session.query"
        svc.audit.emit(kind, session=sid, **{**WHO, **fields})
    if end:
        svc.audit.emit(audit.SESSION_END, session=sid, session_id=1, reason="closed",
                       duration=1.5, bytes_client_to_db=100, bytes_db_to_client=200, **WHO)


def _statement(query: str, rows: int = 1, **more: Any) -> dict[str, Any]:
    return {"query": query, "query_redacted": False, "truncated": False,
            "query_len": len(query), "rows": rows, "bytes": 10 * rows, "duration_ms": 0.25,
            "command_tag": "SELECT 1", **more}


def _two_sessions(svc: Any) -> tuple[str, str]:
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    _session(svc, a, [_statement("select 1")])
    svc.audit.emit(audit.ROLE_CREATE, role="r", by="admin")  # not a session's
    _session(svc, b, [_statement("select 2"), _statement("select x", rows=0, sqlstate="42703",
                                                         error="column x does not exist")])
    _session(svc, a, [_statement("select 3")], end=False)  # same id again: still that session
    return a, b


def test_the_api_filters_by_session_in_order(svc):
    a, b = _two_sessions(svc)
    got = svc.call("audit", ADMIN, {"session": b})
    assert [e["type"] for e in got] == [audit.SESSION_START, "db.session.query",
                                        "db.session.query.failed", audit.SESSION_END]
    assert all(e["session"] == b for e in got)
    assert [e["id"] for e in got] == sorted(e["id"] for e in got)
    of_a = svc.call("audit", ADMIN, {"session": a, "types": ["db.session.query"]})
    assert [e["query"] for e in of_a] == ["select 1", "select 3"]
    assert svc.call("audit", ADMIN, {"session": uuid.uuid4().hex}) == []
    assert len(svc.call("audit", ADMIN, {})) > len(got)  # no filter: everything


@pytest.mark.parametrize("bad", ["x", "1' OR '1'='1", "A" * 32, "0" * 33])
def test_a_malformed_session_id_is_refused(svc, bad):
    with pytest.raises(BadRequest, match="expected a session id"):
        svc.call("audit", ADMIN, {"session": bad})


def test_the_session_filter_is_an_index_lookup(tmp_path):
    store = SQLiteStorage(str(tmp_path / "s.db"))
    try:
        store.append_audit_batch([(1.0, "db.session.start", {"session": "ab" * 16}),
                                  (2.0, "db.session.end", {"session": 7}),  # not a string
                                  (3.0, "role.created", {"role": "r"})])
        seen: list[str] = []
        store._db.set_trace_callback(seen.append)
        store.query_audit(session="x")
        store._db.set_trace_callback(None)
        plan = store._q("EXPLAIN QUERY PLAN " + seen[-1])
        assert [row[3] for row in plan] == ["SEARCH audit USING INDEX audit_session (session=?)"]
        assert [e.type for e in store.query_audit(session="ab" * 16)] == ["db.session.start"]
        assert store.query_audit(session="7") == []
        # the column is an index, not the record: a row moved into a session by editing
        # it (the chain does not cover it) is not shown as that session's
        store._db.execute("DROP TRIGGER audit_no_update")
        store._db.execute("UPDATE audit SET session = ? WHERE type = 'role.created'", ("ab" * 16,))
        assert [e.type for e in store.query_audit(session="ab" * 16)] == ["db.session.start"]
    finally:
        store.close()


def test_a_log_from_before_the_session_column_gains_it(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, "
        "type TEXT NOT NULL, fields TEXT NOT NULL, prev_hash TEXT, hash TEXT);")
    db.execute("INSERT INTO audit (time, type, fields) VALUES (1, 'db.session.start', ?)",
               (json.dumps({"session": "cd" * 16}),))
    db.commit()
    db.close()
    store = SQLiteStorage(path)
    try:
        assert store.query_audit(session="cd" * 16) == []  # older rows carry no column value
        store.append_audit_batch([(2.0, "db.session.end", {"session": "cd" * 16})])
        assert [e.type for e in store.query_audit(session="cd" * 16)] == ["db.session.end"]
        assert len(store.query_audit()) == 3  # the old row, the chain migration, the new one
    finally:
        store.close()


class _Client:
    """The auth client as mwictl holds it, answered by the in-process service."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    def call(self, method: str, **params: Any) -> Any:
        return self.svc.call(method, ADMIN, json.loads(json.dumps(params)))  # as on the wire

    audit_events = AuthClient.audit_events  # the real pager, over call() above


def _show(svc: Any, sid: str, fmt: str = "text", limit: int = 10000) -> int:
    args = argparse.Namespace(id=sid, format=fmt, limit=limit)
    return mwictl_sessions.cmd_sessions(_Client(svc), args)  # type: ignore[arg-type]


def test_sessions_show_prints_start_statements_and_end(svc, capsys):
    _, b = _two_sessions(svc)
    svc.audit.emit("db.session.postgres.statements.parse", session=b, statement_name="s1",
                   query="select\n$1", **WHO)
    assert _show(svc, b.upper()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"Session {b}  bot example (bot-example) as alice@example-db on "
                        "example-server (postgres)")
    assert lines[1].startswith("Started ") and "from 127.0.0.1:5000, roles example-role" in lines[1]
    assert lines[2].split() == ["TIME", "DURATION", "ROWS", "BYTES", "SQLSTATE", "STATEMENT"]
    body = lines[4:-1]
    assert body[0].split()[1:] == ["0.25", "ms", "1", "10", "select", "2"]
    assert body[1].split()[1:6] == ["0.25", "ms", "0", "0", "42703"]
    assert body[2].endswith("[db.session.postgres.statements.parse] query='select\\n$1' "
                            "statement_name=s1")  # a newline never forges a line
    assert lines[-1].startswith("Ended ") and "closed after 1.5 s: 100 bytes to the " \
        "database, 200 from it" in lines[-1]


def test_sessions_show_json_and_an_open_session(svc, capsys):
    a, _ = _two_sessions(svc)
    _show(svc, a, "json")
    shape = json.loads(capsys.readouterr().out)
    assert shape["session"] == a and shape["start"]["type"] == audit.SESSION_START
    assert [s["query"] for s in shape["statements"]] == ["select 1", "select 3"]
    assert shape["end"]["type"] == audit.SESSION_END and shape["other_events"] == [
        e for e in shape["other_events"] if e["type"] == audit.SESSION_START]
    open_one = uuid.uuid4().hex
    _session(svc, open_one, [_statement("select 4", truncated=True, query_len=9000)], end=False)
    _show(svc, open_one)
    text = capsys.readouterr().out
    assert "…(recorded 8 of 9000 chars)" in text
    assert "Ended    (no db.session.end yet" in text


def test_sessions_show_lists_a_redis_events_commands_one_per_line(svc, capsys):
    sid = uuid.uuid4().hex
    commands = [{"command": "SET", "query": "SET", "argc": 2, "status": "read",
                 "args": ["hmac-sha256:aa", "hmac-sha256:bb"]},
                {"command": "AUTH", "query": "AUTH", "argc": 2, "status": "read",
                 "args": ["****", "****"]}]
    _session(svc, sid, [{"commands": commands, "count": 2, "protocol": "redis"}])
    _show(svc, sid, "json")
    shape = json.loads(capsys.readouterr().out)
    assert [(s["command"], s["args"]) for s in shape["statements"]] == [
        ("SET", ["hmac-sha256:aa", "hmac-sha256:bb"]), ("AUTH", ["****", "****"])]
    assert all(s["session"] == sid and "commands" not in s for s in shape["statements"])
    _show(svc, sid)
    rows = [ln.split()[-1] for ln in capsys.readouterr().out.splitlines()[4:-1]]
    assert rows == ["SET", "AUTH"]


def test_sessions_show_says_when_its_start_is_past_the_limit(svc, capsys):
    sid = uuid.uuid4().hex
    _session(svc, sid, [_statement(f"select {i}") for i in range(5)])
    _show(svc, sid, limit=3)
    text = capsys.readouterr().out
    assert "Started  (not in the events read: older than --limit)" in text
    assert "select 3" in text and "select 2" not in text


def test_an_unknown_session_is_an_error(svc):
    with pytest.raises(ValueError, match="no audit events for session"):
        _show(svc, uuid.uuid4().hex)


def test_audit_session_flag(svc, capsys):
    _, b = _two_sessions(svc)
    args = argparse.Namespace(action=None, head=False, expect_head=None, since=None, type=[],
                              limit=1000, format="json", session=b, before=None)
    assert mwictl_commands.cmd_audit(_Client(svc), args) == 0  # type: ignore[arg-type]
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == 4 and {e["session"] for e in events} == {b}


def test_an_audit_reply_holds_the_newest_events_that_fit_in_one_frame(svc):
    """Query events carry statements of up to 16 KiB: 1,000 of them are more than an auth
    API frame (4 MiB). The reply is the newest that fit, in order, and it encodes."""
    from mwiproxy.auth.handlers import AUDIT_REPLY_BUDGET
    from mwiproxy.wire.frames import MAX_FRAME, encode

    big = "select '" + "x" * 16_000 + "'"
    for i in range(400):  # ~6.4 MB of statements
        svc.audit.emit("db.session.query", session=uuid.uuid4().hex, query=f"{big} -- {i}")
    got = svc.call("audit", ADMIN, {"types": ["db.session.query"], "limit": 1000})
    assert 0 < len(got) < 400
    assert got[-1]["query"].endswith("-- 399")  # the newest is there
    assert [e["id"] for e in got] == sorted(e["id"] for e in got)
    size = len(encode({"id": 1, "result": got}))
    assert AUDIT_REPLY_BUDGET - 20_000 < size <= MAX_FRAME


def _big_queries(svc: Any, n: int) -> None:
    big = "select '" + "x" * 16_000 + "'"
    for i in range(n):
        svc.audit.emit("db.session.query", session=uuid.uuid4().hex, query=f"{big} -- {i}")


def test_mwictl_audit_reads_every_page_of_a_log_larger_than_one_reply(svc, capsys):
    """400 events of 16 KiB are more than one 4 MiB reply: `mwictl audit` asks again
    with `before` until it has --limit events, and prints them once each, in order."""
    _big_queries(svc, 400)
    svc.audit.emit(audit.ROLE_CREATE, role="r", by="admin")  # newer, another type
    args = argparse.Namespace(action=None, head=False, expect_head=None, since=None,
                              type=["db.session.query"], limit=1_000_000, format="json",
                              session=None, before=None)
    assert mwictl_commands.cmd_audit(_Client(svc), args) == 0  # type: ignore[arg-type]
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["query"].rsplit(" -- ", 1)[1] for e in events] == [str(i) for i in range(400)]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))

    args.limit, args.before = 250, ids[300]  # a page in the middle: 50..299
    assert mwictl_commands.cmd_audit(_Client(svc), args) == 0  # type: ignore[arg-type]
    middle = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert middle == ids[50:300]


def test_the_audit_api_pages_back_with_before(svc):
    _big_queries(svc, 3)
    got = svc.call("audit", ADMIN, {"types": ["db.session.query"]})
    older = svc.call("audit", ADMIN, {"types": ["db.session.query"], "before": got[-1]["id"]})
    assert [e["id"] for e in older] == [e["id"] for e in got[:-1]]
    assert svc.call("audit", ADMIN, {"before": 1}) == []


@pytest.mark.parametrize("params", [{"before": 0}, {"before": "7"}, {"before": True},
                                    {"limit": -1}, {"limit": 0}, {"limit": 1.5}])
def test_audit_paging_parameters_are_checked(svc, params):
    with pytest.raises(BadRequest, match="expected a positive integer"):
        svc.call("audit", ADMIN, params)
