"""python -m bench: direct vs mwiproxy (native, pure-Python) vs HAProxy on loopback.

Paths are interleaved within each run and every proxy is started fresh for each run;
the table shows medians over the runs and ratios to direct and to the best HAProxy.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from . import load, paths, tlsload, tlspki
from .report import Row, render


def _machine() -> str:
    import ssl

    import uvloop

    u = platform.uname()
    hap = "not installed"
    if exe := shutil.which("haproxy"):
        hap = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{u.system} {u.node} {u.release} {u.version} {u.machine}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"uvloop {uvloop.__version__}, {ssl.OPENSSL_VERSION}, {hap}")


def measure(run: paths.Running, nbytes: int, pings: int, conns: int,
            pki: tlspki.BenchPki) -> dict[str, float]:
    if not run.tls:
        gbit = load.bulk(run.sink, nbytes)
        cpu0 = run.cpu_seconds()
        rtts = load.ping_pong(run.echo, pings)
        cpu = run.cpu_seconds() - cpu0
        return {"gbit": gbit, "p50": load.percentile(rtts, 0.5),
                "p99": load.percentile(rtts, 0.99), "cpu_us": cpu / pings * 1e6}
    ctx = pki.client_context()
    gbit = tlsload.bulk(run.sink, nbytes, ctx)
    cpu0 = run.cpu_seconds()
    rtts = tlsload.ping_pong(run.echo, pings, ctx)
    cpu = run.cpu_seconds() - cpu0
    cpu1 = run.cpu_seconds()
    tlsload.new_connections(run.echo, conns, ctx)
    conn_cpu = run.cpu_seconds() - cpu1
    return {"gbit": gbit, "p50": load.percentile(rtts, 0.5), "p99": load.percentile(rtts, 0.99),
            "cpu_us": cpu / pings * 1e6, "conn_cpu_us": conn_cpu / conns * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbytes", type=int, default=2000, help="bulk bytes per run, MiB")
    parser.add_argument("--pings", type=int, default=20000)
    parser.add_argument("--conns", type=int, default=500,
                        help="new TLS connections per run (CPU per new connection)")
    parser.add_argument("--paths", default=",".join(paths.PATHS))
    args = parser.parse_args(argv)
    names = args.paths.split(",")
    print(f"machine: {_machine()}", flush=True)
    print(f"command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    pki = tlspki.make()
    be = paths.start_backends(str(pki.dir))
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    missing: dict[str, str] = {}
    try:
        for run_no in range(1, args.runs + 1):
            for name in names:
                if name in missing:
                    continue
                t0 = time.perf_counter()
                try:
                    running = paths.start(name, be)
                except (FileNotFoundError, RuntimeError) as exc:
                    missing[name] = str(exc)
                    print(f"  {name}: skipped: {exc}", flush=True)
                    continue
                try:
                    m = measure(running, args.mbytes << 20, args.pings, args.conns, pki)
                finally:
                    running.stop()
                results[name].append(m)
                print(f"  run {run_no}/{args.runs} {name:16} {m['gbit']:6.2f} Gbit/s  "
                      f"p50 {m['p50']:6.1f} us  p99 {m['p99']:6.1f} us  "
                      f"cpu {m['cpu_us']:5.1f} us/rt  "
                      f"{m.get('conn_cpu_us', 0):6.1f} us/conn  ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    finally:
        be.proc.terminate()
        be.proc.wait(10)
        shutil.rmtree(pki.dir, ignore_errors=True)
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
