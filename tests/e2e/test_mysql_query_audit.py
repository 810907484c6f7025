"""Query audit (issue 14) for MySQL against a real MariaDB through the cluster proxy: the
`mysql` client and PyMySQL (queries, a failing one, affected rows, COM_INIT_DB, a
password statement redacted) and raw COM_STMT_PREPARE / EXECUTE / CLOSE, each found in
the audit log with its result (the commands of a `db.session.query` event flattened, as
mwictl sessions shows them). Runs in whichever build the cluster uses."""

from __future__ import annotations

import sqlite3
import struct
import uuid

import pytest

from mwiproxy.cli.mwictl_sessions import commands_of
from mwiproxy.config.cluster import STATE_DB_NAME
from mwiproxy.devkit.topology import wait_for
from mwiproxy.proxy.queryaudit import PARAM_KEY_META
from mwiproxy.wire import mysql
from mwiproxy.wire.sqlredact import param_digests
from tests.e2e.test_mysql import (  # noqa: F401 (my, out, tunnel: its fixtures)
    _cli,
    _connect,
    _read_packet,
    _signed_in,
    my,
    out,
    tunnel,
)

pymysql = pytest.importorskip("pymysql")

pytestmark = pytest.mark.integration


def _marker() -> str:
    return "probe_" + uuid.uuid4().hex[:12]


def _flat(topo, kind: str) -> list[dict[str, object]]:
    """The events of `kind`, a query event's commands one dict each."""
    return [c for e in topo.audit(kind) for c in commands_of(e)]


def _wait_events(topo, kind: str, marker: str, n: int = 1) -> list[dict[str, object]]:
    """The events of `kind` (kinds, comma-separated) whose query holds `marker`."""
    found: list[dict[str, object]] = []

    def enough() -> bool:
        found[:] = [e for k in kind.split(",") for e in _flat(topo, k)
                    if marker in str(e.get("query", ""))]
        return len(found) >= n
    assert wait_for(enough), (kind, marker, found)
    return found


def test_mysql_client_query_has_a_result_summary(my, tunnel):  # noqa: F811
    m = _marker()
    res = _cli(tunnel, f"select seq as {m} from seq_1_to_5")
    assert res.returncode == 0, res.stderr
    [ev] = _wait_events(my, "db.session.query", m)
    assert ev["command"] == "COM_QUERY" and ev["status"] == "ok"
    assert ev["rows"] == 5 and ev["bytes"] > 0 and ev["duration_ms"] >= 0
    assert ev["db_user"] == "alice" and ev["db_name"] == "example-db" and ev["session"]
    assert ev["query_redacted"] is False and ev["truncated"] is False


def test_pymysql_failure_affected_rows_and_init_db(my, tunnel):  # noqa: F811
    m = _marker()
    with _connect(tunnel) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute(f"select * from {m}")
        cur.execute(f"create temporary table {m} (x int)")
        cur.execute(f"insert into {m} values (1), (2), (3)")
        conn.select_db("example-db")
        cur.execute(f"select count(*) from {m}")
        assert cur.fetchone() == (3,)
    [failed] = _wait_events(my, "db.session.query.failed", m)
    assert failed["error_code"] == 1146 and failed["sqlstate"] == "42S02"
    assert m in str(failed["error"]) and failed["status"] == "error"
    [insert] = [e for e in _wait_events(my, "db.session.query", m, 3)
                if str(e["query"]).startswith("insert")]
    assert insert["rows"] == 3
    inits = [e for e in _flat(my, "db.session.query")
             if e.get("command") == "COM_INIT_DB" and e["session"] == insert["session"]]
    assert inits and inits[0]["schema"] == "example-db" and inits[0]["status"] == "ok"


def test_a_password_is_masked_whether_the_statement_runs_or_not(my, tunnel):  # noqa: F811
    m = _marker()
    secret = "pw-" + uuid.uuid4().hex
    with _connect(tunnel) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute(f"create user {m}@localhost identified by '{secret}'")
    evs = _wait_events(my, "db.session.query.failed,db.session.query", m)
    assert evs[0]["query_redacted"] is True and "'****'" in str(evs[0]["query"])
    assert secret not in str(evs)


def test_prepared_statement_execute_carries_its_text(my, tunnel):  # noqa: F811
    m = _marker()
    s, reader = _signed_in(tunnel)
    with s:
        s.sendall(mysql.packet(f"\x16select ? + 1 as {m}".encode(), 0))
        seq, ok = _read_packet(reader)
        assert ok[:1] == b"\x00", ok
        stmt, cols, params = struct.unpack_from("<IHH", ok, 1)
        for _ in range((params + 1 if params else 0) + (cols + 1 if cols else 0)):
            _read_packet(reader)
        # one parameter, LONGLONG 41
        s.sendall(mysql.packet(b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x00\x01"
                               + b"\x08\x00" + struct.pack("<q", 41), 0))
        answers = [_read_packet(reader) for _ in range(5)]  # count, def, EOF, row, EOF
        assert answers[-1][1][:1] == b"\xfe", answers
        s.sendall(mysql.packet(b"\x19" + struct.pack("<I", stmt), 0)
                  + mysql.packet(b"\x01", 0))
    [prep] = _wait_events(my, "db.session.mysql.statements.prepare", m)
    assert prep["statement_id"] == stmt and prep["status"] == "ok"
    [ex] = [e for e in _wait_events(my, "db.session.query", m)
            if e["command"] == "COM_STMT_EXECUTE"]
    assert ex["statement_id"] == stmt and ex["rows"] == 1 and ex["status"] == "ok"
    assert wait_for(lambda: any(e["statement_id"] == stmt and e["session"] == ex["session"]
                                for e in my.audit("db.session.mysql.statements.close")))


def test_execute_parameters_are_hashed_and_their_types_remembered(my, tunnel):  # noqa: F811
    m = _marker()
    secret = "s3cr3t-" + uuid.uuid4().hex[:8]
    s, reader = _signed_in(tunnel)
    with s:
        s.sendall(mysql.packet(f"\x16select ? + 1 as {m}, ?, ? is null".encode(), 0))
        seq, ok = _read_packet(reader)
        assert ok[:1] == b"\x00", ok
        stmt, cols, params = struct.unpack_from("<IHH", ok, 1)
        assert params == 3
        for _ in range((params + 1 if params else 0) + (cols + 1 if cols else 0)):
            _read_packet(reader)
        values = struct.pack("<q", 41) + bytes([len(secret)]) + secret.encode()
        # LONGLONG 41, VAR_STRING secret, NULL (bitmap bit 2); types bound
        s.sendall(mysql.packet(b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x04\x01"
                               + b"\x08\x00\xfd\x00\x06\x00" + values, 0))
        answers = [_read_packet(reader) for _ in range(7)]  # count, 3 defs, EOF, row, EOF
        assert answers[-1][1][:1] == b"\xfe", answers
        # again, the types not sent (new-params-bound 0): the tap remembers them
        s.sendall(mysql.packet(b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x04\x00"
                               + values, 0))
        answers = [_read_packet(reader) for _ in range(7)]
        assert answers[-1][1][:1] == b"\xfe", answers
        s.sendall(mysql.packet(b"\x01", 0))
    [prep] = _wait_events(my, "db.session.mysql.statements.prepare", m)
    assert prep["params"] == 3
    exes = [e for e in _wait_events(my, "db.session.query", m, 2)
            if e["command"] == "COM_STMT_EXECUTE"]
    assert len(exes) == 2 and exes[0]["parameters"] == exes[1]["parameters"]
    first, text, null = exes[0]["parameters"]
    assert str(first).startswith("hmac-sha256:") and str(text).startswith("hmac-sha256:")
    assert null is None and first != text and "parameters_truncated" not in exes[0]
    # digested with the cluster's key (kept in storage: they compare across restarts)
    with sqlite3.connect(my.cluster.data_dir / STATE_DB_NAME) as db:
        (key,) = db.execute("SELECT value FROM meta WHERE key = ?",
                            (PARAM_KEY_META,)).fetchone()
    assert [first, text] == param_digests([b"41", secret.encode()], bytes.fromhex(key))
    assert secret not in str(my.audit("db.session.query"))
