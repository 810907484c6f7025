"""Tunnel-mode pgbench through two cluster processes behind the local proxy, against one.

    python -m bench.twoclusters [--seconds 10] [--runs 3] [--out FILE]

One run starts a PostgreSQL for the shared cluster state (`storage: {type: postgres}`),
cluster process A with its database PostgreSQL (the dev kit's topology), cluster
process B on the same storage with a copy of A's CA directory (README "Several cluster
processes"), one bot output, and three tunnel-mode local proxies on it: `--proxy=A`
("one cluster process"), `--proxy=A,B` ("two cluster processes": failover, so B only
stands by) and `--proxy=A,B --spread` (new connections take A and B in turn). Cells, interleaved
and repeated --runs times (medians): select-only at 16 clients on held connections, and
with a new connection per transaction (`-C`, where the cluster process does the most
work per transaction: a TLS handshake and a database sign-in each). The CPU each
cluster process spent on each target (/proc/PID/stat) shows where the sessions went.
The issue's target: two ≥ 1.0× one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mwiproxy.devkit import postgres
from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.topology import CLUSTER_YAML, cluster_config, start_topology

from . import dbpath
from .dbpath import CLK_TCK, cpu_ticks, first_line

PGBENCH = str(postgres.PG_BIN / "pgbench")
SCALE = 4
CLIENTS = 16
CELLS = {"select-only, 16 clients": ("-S",),
         "select-only, 16 clients, -C": ("-S", "-C")}
ONE, TWO = "one cluster process", "two cluster processes"
SPREAD = "two, --spread"
TARGETS = (ONE, TWO, SPREAD)


@dataclasses.dataclass
class Sample:
    tps: float
    cpu_a_s: float  # CPU seconds cluster process A spent during the run
    cpu_b_s: float

    @property
    def cpu_us_per_tx(self) -> float:
        """Both cluster processes' CPU per transaction (steadier than TPS on a shared box)."""
        return (self.cpu_a_s + self.cpu_b_s) * 1e6 / max(self.tps, 1e-9) / self.seconds

    seconds: int = 1


@dataclasses.dataclass
class Rig:
    dsns: dict[str, str]  # target → pgbench connection string
    pid_a: int
    pid_b: int


@contextmanager
def rig(root: Path) -> Iterator[Rig]:
    store = postgres.PostgresServer().start()
    try:
        store.psql("CREATE DATABASE mwi_store")
        template = CLUSTER_YAML + (
            "storage:\n  type: postgres\n  conn_string: 'host=127.0.0.1 "
            f"port={store.port} user=postgres dbname=mwi_store'\n")
        with start_topology(root, template) as a:
            (root / "data-b").mkdir(mode=0o700)
            shutil.copytree(a.cluster.data_dir / "ca", root / "data-b" / "ca")
            b = ClusterProcess(root / "data-b", config=cluster_config(a.pg.port, template))
            b.start()
            try:
                pg = a.pg
                subprocess.run([PGBENCH, "-i", "-q", "-s", str(SCALE), "-h", str(pg.root),
                                "-p", str(pg.port), "-U", "alice", "example-db"],
                               check=True, capture_output=True)
                out = a.bot_output("bench-two", ttl="1h")
                one = a.local_proxy(out, tunnel=True)
                two = a.local_proxy(out, tunnel=True,
                                    proxy=f"{a.cluster.addr},{b.addr}")
                spread = a.local_proxy(out, tunnel=True, extra=("--spread",),
                                       proxy=f"{a.cluster.addr},{b.addr}")
                db = "user=alice dbname=example-db sslmode=disable"
                assert a.cluster.proc is not None and b.proc is not None
                yield Rig({ONE: f"host=127.0.0.1 port={one.port} {db}",
                           TWO: f"host=127.0.0.1 port={two.port} {db}",
                           SPREAD: f"host=127.0.0.1 port={spread.port} {db}"},
                          a.cluster.proc.pid, b.proc.pid)
            finally:
                b.stop()
    finally:
        store.stop()


def run_cell(r: Rig, target: str, args: tuple[str, ...], seconds: int) -> Sample:
    cmd = [PGBENCH, "-n", "-T", str(seconds), "-c", str(CLIENTS), "-j", "2", *args,
           r.dsns[target]]
    a0, b0 = cpu_ticks([r.pid_a]), cpu_ticks([r.pid_b])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    a1, b1 = cpu_ticks([r.pid_a]), cpu_ticks([r.pid_b])
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed on {target}: {res.stderr[-2000:]}")
    done = next(int(line.rsplit(":", 1)[1]) for line in res.stdout.splitlines()
                if line.startswith("number of transactions actually processed"))
    return Sample(done / seconds, (a1 - a0) / CLK_TCK, (b1 - b0) / CLK_TCK, seconds)


def measure(r: Rig, seconds: int, runs: int) -> dict[tuple[str, str], list[Sample]]:
    results: dict[tuple[str, str], list[Sample]] = {}
    for run in range(runs):
        for cell, args in CELLS.items():
            for target in TARGETS if run % 2 == 0 else TARGETS[::-1]:
                s = run_cell(r, target, args, seconds)
                results.setdefault((cell, target), []).append(s)
                print(f"run {run + 1}/{runs} {cell:28} {target:22} tps={s.tps:8.1f} "
                      f"cpu A={s.cpu_a_s:5.2f}s B={s.cpu_b_s:5.2f}s cpu/tx={s.cpu_us_per_tx:7.1f}us",
                      flush=True)
    return results


def table(results: dict[tuple[str, str], list[Sample]]) -> str:
    lines = ["| cell | target | TPS (median) | TPS of runs | × one | cluster A CPU s | "
             "cluster B CPU s | clusters' CPU µs/tx |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for cell in CELLS:
        base = statistics.median(s.tps for s in results[(cell, ONE)])
        for target in TARGETS:
            ss = results[(cell, target)]
            tps = statistics.median(s.tps for s in ss)
            lines.append(
                f"| {cell} | {target} | {tps:.1f} | {', '.join(f'{s.tps:.0f}' for s in ss)} "
                f"| {tps / base:.2f} | {statistics.median(s.cpu_a_s for s in ss):.2f} "
                f"| {statistics.median(s.cpu_b_s for s in ss):.2f} "
                f"| {statistics.median(s.cpu_us_per_tx for s in ss):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.twoclusters", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="duration of each cell")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    if not postgres.available():
        print("PostgreSQL 15 is not installed", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mwi-two-") as tmp, rig(Path(tmp)) as r:
        results = measure(r, args.seconds, args.runs)
    load_after = os.getloadavg()
    report = (f"{table(results)}\n\n"
              f"{dbpath.machine(first_line(PGBENCH, '--version'))}\n"
              f"- load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
              "(1 min; the box is shared)\n\n"
              f"Command: `python -m bench.twoclusters --seconds {args.seconds} "
              f"--runs {args.runs}`\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
