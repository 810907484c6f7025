"""python -m bench: direct vs mwiproxy (native, pure-Python) vs HAProxy on loopback.

Paths are interleaved within each run and every proxy is started fresh for each run;
the table shows medians over the runs and ratios to direct and to the best HAProxy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from . import load, paths
from .report import Row, render


def _machine() -> str:
    import shutil

    import uvloop

    u = platform.uname()
    hap = "not installed"
    if exe := shutil.which("haproxy"):
        hap = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{u.system} {u.node} {u.release} {u.version} {u.machine}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"uvloop {uvloop.__version__}, {hap}")


def measure(run: paths.Running, nbytes: int, pings: int) -> dict[str, float]:
    gbit = load.bulk(run.sink, nbytes)
    cpu0 = run.cpu_seconds()
    rtts = load.ping_pong(run.echo, pings)
    cpu = run.cpu_seconds() - cpu0
    return {"gbit": gbit, "p50": load.percentile(rtts, 0.5), "p99": load.percentile(rtts, 0.99),
            "cpu_us": cpu / pings * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbytes", type=int, default=2000, help="bulk bytes per run, MiB")
    parser.add_argument("--pings", type=int, default=20000)
    parser.add_argument("--paths", default=",".join(paths.PATHS))
    args = parser.parse_args(argv)
    names = args.paths.split(",")
    print(f"machine: {_machine()}", flush=True)
    print(f"command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    backend, sink, echo = paths.start_backends()
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    missing: dict[str, str] = {}
    try:
        for run_no in range(1, args.runs + 1):
            for name in names:
                if name in missing:
                    continue
                t0 = time.perf_counter()
                try:
                    running = paths.start(name, sink, echo)
                except (FileNotFoundError, RuntimeError) as exc:
                    missing[name] = str(exc)
                    print(f"  {name}: skipped: {exc}", flush=True)
                    continue
                try:
                    m = measure(running, args.mbytes << 20, args.pings)
                finally:
                    running.stop()
                results[name].append(m)
                print(f"  run {run_no}/{args.runs} {name:16} {m['gbit']:6.2f} Gbit/s  "
                      f"p50 {m['p50']:6.1f} us  p99 {m['p99']:6.1f} us  "
                      f"cpu {m['cpu_us']:5.1f} us/rt  ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    finally:
        backend.terminate()
        backend.wait(10)
    rows = [Row(n, {k: statistics.median(r[k] for r in results[n]) for k in results[n][0]})
            for n in names if results[n]]
    print()
    print(render(rows, args.runs))
    for name, why in missing.items():
        print(f"missing peer: {name}: {why}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        sys.exit(f"bench failed: {exc}")
