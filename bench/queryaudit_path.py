"""The cluster's per-statement query-audit cost, alone: pgbench-like simple queries (a
SELECT by random key: every text new) as the tap records them, through
proxy/queryaudit.py, the audit writer and the SQLite store; the process CPU (writer
thread included) per statement. Steadier than TPS on a shared box. `--engine redis`:
redis-benchmark's SET (random key, 3-byte value) through proxy/rdsqueryaudit.py instead;
`--engine mysql`: bench/engines.py's point selects (COM_QUERY, one row each) through
proxy/myqueryaudit.py, handed over as a MariaDB relay's drains are.

    python -m bench.queryaudit_path [--statements 20000] [--repeat 3]
                                    [--engine postgres|redis|mysql]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import sys
import tempfile
import time

from bench.engineload import point_select_sql
from mwiproxy._native import NATIVE, myaudit_py, pgaudit_py, rdsaudit_py
from mwiproxy.auth.audit import AuditLog
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.proxy.myqueryaudit import MySQLQueryAudit
from mwiproxy.proxy.queryaudit import QueryAudit, QueryAuditPolicy
from mwiproxy.proxy.rdsqueryaudit import RedisQueryAudit

WHO = {"session": "0123456789abcdef", "user": "bot-bench", "db_service": "example-db",
       "db_user": "alice", "db_name": "example-db", "protocol": "postgres", "session_id": 1}
BATCH = 1000  # records handed over per call (the relay's takes hold many)
# a Redis session's records per take: 50 redis-benchmark clients at ~40k requests/s,
# drained every 100 ms, give each relay about this many (one event per take)
REDIS_BATCH = 80
# a MariaDB session's records per take: 16 mysqlslap clients at ~25k statements/s,
# drained every 100 ms: about 150 statements (two records each) per relay
MYSQL_BATCH = 300


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def _records(n: int, rng: random.Random) -> list[bytes]:
    """n select-only statements and their results, as the tap records them."""
    tap = pgaudit_py.Tap()
    answer = (_msg(b"T", b"\0\1abalance\0" + b"\0" * 18)
              + _msg(b"D", b"\0\1" + struct.pack(">i", 4) + b"1234")
              + _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I"))
    now = time.monotonic_ns()
    for _ in range(n):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {rng.randrange(1, 1600001)};"
        tap.feed(0, _msg(b"Q", sql.encode() + b"\0"), now)
        tap.feed(1, answer, now + 1000)
    return tap.records


def _redis_records(n: int, rng: random.Random) -> list[bytes]:
    """n SET commands as the Redis tap records them (side a only)."""
    tap = rdsaudit_py.Tap()
    for _ in range(n):
        key = b"key:%012d" % rng.randrange(100000)
        tap.feed(0, b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n" % (len(key), key), 1)
    return tap.records


def _mysql_records(n: int, rng: random.Random) -> list[bytes]:
    """n of bench/engines.py's point selects and their one-row results, as the MySQL
    tap records them."""
    tap = myaudit_py.Tap()
    queries = [q.rstrip(";").encode() for q in point_select_sql().splitlines()]
    row = (b"\x01\x00\x00\x01\x01" + _mypacket(b"\x03def\x00\x00\x00\x01v\x00\x0c"
           + b"\x21\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00", 2)
           + _mypacket(b"\xfe\x00\x00\x02\x00", 3) + _mypacket(b"\x08value-42", 4)
           + _mypacket(b"\xfe\x00\x00\x02\x00", 5))
    now = time.monotonic_ns()
    for i in range(n):
        q = queries[rng.randrange(len(queries))]
        tap.feed(0, _mypacket(b"\x03" + q, 0), now + 2000 * i)
        tap.feed(1, row, now + 2000 * i + 1000)
    return tap.records


def _mypacket(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


_ENGINES = {"postgres": (_records, QueryAudit, BATCH),
            "redis": (_redis_records, RedisQueryAudit, REDIS_BATCH),
            "mysql": (_mysql_records, MySQLQueryAudit, MYSQL_BATCH)}


def _once(n: int, rng: random.Random, engine: str = "postgres") -> float:
    make, audit_class, step = _ENGINES[engine]
    records = make(n, rng)
    with tempfile.TemporaryDirectory(prefix="bench-qap-") as tmp:
        storage = SQLiteStorage(os.path.join(tmp, "state.db"))
        audit = AuditLog(storage)
        qa = audit_class(audit.emit, WHO, QueryAuditPolicy(True, "hash"), key=b"k" * 32,
                         emit_many=audit.emit_many)
        started = time.process_time()
        for i in range(0, len(records), step):
            qa.on_records(records[i:i + step])
        audit.flush()
        spent = time.process_time() - started
        if qa.events != n:
            raise SystemExit(f"{qa.events} events for {n} statements")
        audit.close()
        storage.close()
    return 1e6 * spent / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statements", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", choices=tuple(_ENGINES), default="postgres")
    args = ap.parse_args(argv)
    rng = random.Random(1)
    runs = [_once(args.statements, rng, args.engine) for _ in range(args.repeat)]
    print(f"{'native' if NATIVE else 'pure'} build, {args.engine}: CPU per statement "
          f"{statistics.median(runs):.1f} µs (median of {args.repeat}: "
          f"{', '.join(f'{r:.1f}' for r in runs)}); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
