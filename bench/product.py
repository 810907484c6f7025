"""The product's rows of `python -m bench`: the same kinds of figures, measured through
the product's own processes.

The product routes only to databases (the cluster proxy reads the PostgreSQL startup
message, checks identity and RBAC, audits, and dials PostgreSQL with TLS and a
database-client certificate), so these rows cannot use the raw sink/echo back ends:
they run against a real PostgreSQL 15, through the topology of bench.pgbench_topology
(`mwiproxy start` cluster, bot credentials, `mwibot proxy … --tunnel` and a non-tunnel
local proxy, and the two-HAProxy topology in the same places). The figures are those that
stay comparable with a database behind the proxy, all via psycopg (the same client
cost on every path):

- bulk: `COPY (… repeat('x', 1 MiB) …) TO STDOUT`, Gbit/s (PostgreSQL is the source);
- round trip: `select 1` on an open connection, p50/p99 µs, and proxy CPU per round trip;
- new connections: connect (all TLS legs, identity, RBAC, audit) + `select 1` + close,
  per second and proxy CPU per new connection.

Idle connections held are not measured here (PostgreSQL's max_connections, not the proxy,
would bound them). Proxy CPU is the on-CPU time of every proxy process of the path (all
threads, /proc/PID/task/*/schedstat): local proxy + cluster for mwiproxy, both HAProxies.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import load
from .measure import Plan

# bench path name -> the pgbench_topology target it measures
PATHS = {
    "pg-direct-tls": "direct TLS",
    "pg-mwiproxy-tunnel": "mwiproxy tunnel",
    "pg-mwiproxy-non-tunnel": "mwiproxy non-tunnel",
    "pg-haproxy": "HAProxy topology",
}
MAX_BULK = 256 << 20  # PostgreSQL generates the bytes: keep the figure's run short


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])  # ns on CPU
    return total / 1e9


def _bulk(dsn: str, nbytes: int) -> float:
    import psycopg

    mib = max(1, nbytes >> 20)
    got = 0
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        t0 = time.perf_counter()
        with cur.copy(f"COPY (SELECT repeat('x', 1048576) FROM generate_series(1, {mib}))"
                      " TO STDOUT") as copy:
            for data in copy:
                got += len(data)
        elapsed = time.perf_counter() - t0
    return got * 8 / elapsed / 1e9


def _round_trips(dsn: str, n: int) -> list[float]:
    import psycopg

    rtts = []
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        for _ in range(n):
            t0 = time.perf_counter()
            cur.execute("select 1")
            cur.fetchone()
            rtts.append((time.perf_counter() - t0) * 1e6)
    return rtts


def _new_connections(dsn: str, n: int) -> float:
    import psycopg

    t0 = time.perf_counter()
    for _ in range(n):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select 1").fetchone()
    return n / (time.perf_counter() - t0)


def _measure(dsn: str, pids: list[int], plan: Plan, say: Callable[[str], None]
             ) -> dict[str, float]:
    def cpu_us(per: int, work: Callable[[], object]) -> tuple[object, float | None]:
        c0 = cpu_seconds(pids)
        out = work()
        return out, ((cpu_seconds(pids) - c0) / per * 1e6) if pids else None

    m: dict[str, float] = {}
    say("bulk (COPY TO STDOUT)")
    m["gbit"] = _bulk(dsn, min(plan.nbytes, MAX_BULK))
    say("round trips (select 1)")
    rtts, cpu_rt = cpu_us(plan.pings, lambda: _round_trips(dsn, plan.pings))
    assert isinstance(rtts, list)
    m["p50"], m["p99"] = load.percentile(rtts, 0.5), load.percentile(rtts, 0.99)
    say("new connections (connect + select 1)")
    rate, cpu_conn = cpu_us(plan.conns, lambda: _new_connections(dsn, plan.conns))
    assert isinstance(rate, float)
    m["conn_s"] = rate
    if cpu_rt is not None and cpu_conn is not None:
        m["cpu_rt"], m["cpu_conn"] = cpu_rt, cpu_conn
    return m


def run(names: list[str], plan: Plan, say: Callable[[str, str], None]
        ) -> dict[str, dict[str, float]]:
    """One run: a fresh topology (every process started anew), each named path measured
    in turn; figures by path (keys as in report.FIGURES)."""
    from .pgbench_topology import topology  # imports the dev kit: only when asked for

    with tempfile.TemporaryDirectory(prefix="mwi-bench-") as tmp, \
            topology(Path(tmp), with_ping=False, with_agent=False) as targets:
        by_name = {t.name: t for t in targets}
        out = {}
        for name in names:
            target = by_name[PATHS[name]]
            out[name] = _measure(target.dsn, target.pids, plan, _teller(say, name))
    return out


def _teller(say: Callable[[str, str], None], name: str) -> Callable[[str], None]:
    return lambda what: say(name, what)
