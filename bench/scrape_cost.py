"""What serving /metrics costs: CPU per scrape of each process, read from /proc.

    python -m bench.scrape_cost [--scrapes 300] [--sessions 20]

Starts the devkit topology (a real PostgreSQL, the cluster with `diag_addr`, bot
credentials, a tunnel-mode `mwibot proxy --diag-addr`), runs `--sessions` psql sessions
through it (so the data-path families carry samples), then GETs each /metrics
`--scrapes` times back to back and reads the process's utime + stime before and after.
Prints CPU per scrape, the page size and what that is as a share of one core at
Prometheus's default scrape interval (15 s) and at 1 s. The cost of counting bytes on
the relay's path is measured separately (the relay bench with counting on and off);
this is the other half: the cost of reading and rendering what was counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import CLUSTER_YAML, start_topology

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(name: str, pid: int, addr: str, scrapes: int) -> dict[str, float]:
    url = f"http://{addr}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:  # warm: first render, imports
        size = len(r.read())
    before, start = cpu_seconds(pid), time.monotonic()
    for _ in range(scrapes):
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
    cpu = cpu_seconds(pid) - before
    wall = time.monotonic() - start
    per = cpu / scrapes
    row = {"cpu_ms_per_scrape": per * 1e3, "page_bytes": size, "wall_ms": wall / scrapes * 1e3,
           "core_share_15s": per / 15, "core_share_1s": per / 1}
    print(f"| {name} | {row['cpu_ms_per_scrape']:.2f} | {size} | "
          f"{row['core_share_15s'] * 100:.3f} % | {row['core_share_1s'] * 100:.2f} % |",
          flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scrape_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scrapes", type=int, default=300, help="GETs of each /metrics")
    p.add_argument("--sessions", type=int, default=20,
                   help="psql sessions run through the proxies first")
    args = p.parse_args()
    diag = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp, \
            start_topology(Path(tmp), CLUSTER_YAML + f"diag_addr: {diag}\n") as topo:
        out = topo.bot_output("scrape-bot")
        lp_diag = f"127.0.0.1:{free_port()}"
        lp = topo.local_proxy(out, tunnel=True, extra=(f"--diag-addr={lp_diag}",))
        for i in range(args.sessions):
            r = topo.psql(topo.dsn(lp), f"select {i}")
            assert r.returncode == 0, r.stderr
        assert topo.cluster.proc is not None
        print(f"{args.scrapes} scrapes each, after {args.sessions} sessions\n")
        print("| process | CPU ms / scrape | page bytes | one core, every 15 s | every 1 s |")
        print("|---|---:|---:|---:|---:|")
        measure("cluster (proxy + auth)", topo.cluster.proc.pid, diag, args.scrapes)
        measure("local proxy (tunnel)", lp.proc.pid, lp_diag, args.scrapes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
