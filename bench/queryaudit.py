"""What query audit costs: pgbench through tunnel mode with it on and off.

    python -m bench.queryaudit [--seconds 8] [--runs 3] [--clients 16]

Two topologies run side by side (each its own PostgreSQL, cluster and tunnel-mode local
proxy; the same scale), identical but for the cluster option `audit.queries`. Cells:
select-only and TPC-B at --clients clients, interleaved on/off, each repeated --runs
times; medians of TPS and per-transaction p50 (pgbench -l). Prints a Markdown table with
the ratios, the CPU per transaction of the local proxy and cluster processes
(/proc/PID/stat), and the machine's load average (other work on the box shows there), and the
count of db.session.query events the "on" side stored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mwiproxy.config.cluster import STATE_DB_NAME
from mwiproxy.devkit.topology import CLUSTER_YAML, Topology, start_topology

from .pgbench_topology import PGBENCH, SCALE, Cell, Sample, Target, run_cell

AUDIT_OFF = CLUSTER_YAML + "audit:\n  queries: false\n"


@contextmanager
def _side(root: Path, template: str) -> Iterator[tuple[Topology, Target]]:
    root.mkdir(parents=True)
    with start_topology(root, template) as topo:
        pg = topo.pg
        subprocess.run([PGBENCH, "-i", "-q", "-s", str(SCALE), "-h", str(pg.root), "-p",
                        str(pg.port), "-U", "alice", "example-db"], check=True,
                       capture_output=True)
        out = topo.bot_output("bench", ttl="1h")
        tunnel = topo.local_proxy(out, tunnel=True, extra=("--no-ping",))
        assert topo.cluster.proc is not None
        yield topo, Target("tunnel", f"host=127.0.0.1 port={tunnel.port} user=alice "
                           "dbname=example-db sslmode=disable",
                           [tunnel.proc.pid, topo.cluster.proc.pid])


def _stored(topo: Topology, type_: str) -> int:
    """Events of a type in the cluster's audit table (read directly: no API round trip)."""
    path = topo.cluster.data_dir / STATE_DB_NAME
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("select count(*) from audit where type = ?", (type_,))
                   .fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args(argv)
    cells = [Cell(f"select-only, {args.clients} clients", ("-S",), args.clients, False),
             Cell(f"TPC-B, {args.clients} clients", (), args.clients, False)]
    results: dict[tuple[str, str], list[Sample]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-qa-") as tmp, ExitStack() as stack:
        on_topo, on = stack.enter_context(_side(Path(tmp) / "on", CLUSTER_YAML))
        _, off = stack.enter_context(_side(Path(tmp) / "off", AUDIT_OFF))
        for run in range(args.runs):
            for cell in cells:
                for name, target in (("on", on), ("off", off))[::1 if run % 2 else -1]:
                    sample = run_cell(target, cell, args.seconds)
                    results.setdefault((cell.name, name), []).append(sample)
                    print(f"{cell.name:28} audit {name:3}: tps={sample.tps:8.1f} "
                          f"p50={sample.p50_ms:6.3f}ms", file=sys.stderr)
        events = _stored(on_topo, "db.session.query")
        overflows = _stored(on_topo, "audit.overflow") + _stored(on_topo, "audit.query.dropped")
    load_after = os.getloadavg()
    print("| cell | TPS off | TPS on | on/off | p50 off (ms) | p50 on (ms) | p50 added "
          "| proxies' CPU µs/tx off | on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        off_s, on_s = results[(cell.name, "off")], results[(cell.name, "on")]
        tps_off = statistics.median(s.tps for s in off_s)
        tps_on = statistics.median(s.tps for s in on_s)
        p50_off = statistics.median(s.p50_ms for s in off_s)
        p50_on = statistics.median(s.p50_ms for s in on_s)
        cpu_off = statistics.median(s.cpu_us_per_tx for s in off_s)
        cpu_on = statistics.median(s.cpu_us_per_tx for s in on_s)
        print(f"| {cell.name} | {tps_off:.0f} | {tps_on:.0f} | {tps_on / tps_off:.2f}x | "
              f"{p50_off:.3f} | {p50_on:.3f} | {100 * (p50_on / p50_off - 1):+.1f} % | "
              f"{cpu_off:.0f} | {cpu_on:.0f} |")
    print(f"\n{args.runs} runs x {args.seconds} s per cell, medians; db.session.query events "
          f"stored by the audited side: {events} (audit.overflow / audit.query.dropped "
          f"events: {overflows}); load average (1, 5, 15 min) before "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
