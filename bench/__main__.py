"""python -m bench: direct vs mwiproxy vs HAProxy on loopback.

Three groups of rows. The product (pg-*, bench.product): the product's own processes
(`mwiproxy start`, `mwibot proxy … --tunnel` and non-tunnel) in front of a real
PostgreSQL, beside direct TLS and an HAProxy topology. The raw core (core-*,
bench.relayserver: `_native.Acceptor` + `Relay`, compiled and pure-Python; NOT the
product: no identity, RBAC, audit or database protocol) beside direct and HAProxy, plain
TCP and TLS, against sink/echo back ends.
Paths are interleaved within each run and every proxy is started fresh for each run;
the tables show medians over the runs, ratios to direct and to HAProxy, and the issue's
targets marked met or missed. PNG plots go to --out (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import paths, plots, product, tlspki
from .measure import Plan, measure
from .report import Row, render

QUICK = Plan(nbytes=64 << 20, pings=500, conns=50, idle=300)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return (out.stdout or out.stderr).strip().split("\n")[0]


def machine() -> str:
    import ssl

    import Cython
    import uvloop

    u = platform.uname()
    load = os.getloadavg()
    return (f"{u.system} {u.release} {u.version} {u.machine}, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.2f}; Python {platform.python_version()}, "
            f"uvloop {uvloop.__version__}, Cython {Cython.__version__}, {ssl.OPENSSL_VERSION}, "
            f"{_version(['haproxy', '-v'])}, {_version(['gcc', '--version'])}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbytes", type=int, default=2000, help="bulk MiB per run and figure")
    parser.add_argument("--pings", type=int, default=20000)
    parser.add_argument("--conns", type=int, default=500,
                        help="new connections per run (rate and CPU per new connection)")
    parser.add_argument("--idle", type=int, default=9900,
                        help="idle connections held per run (0: skip the figure)")
    parser.add_argument("--paths", default=",".join(paths.PATHS + list(product.PATHS)),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--out", default="bench/out", help="PNG plots and results.json here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 run, small sizes (numbers mean little)")
    return parser.parse_args(argv)


def _product_run(names: list[str], plan: Plan, results: dict[str, list[dict[str, float]]],
                 missing: dict[str, str], tag: str) -> None:
    """The product's paths of one run: one fresh topology for all of them."""
    wanted = [n for n in names if n in product.PATHS and n not in missing]
    if not wanted:
        return

    def say(name: str, what: str) -> None:
        print(f"{tag} {name}: {what} ...", flush=True)

    t0 = time.perf_counter()
    try:
        got = product.run(wanted, plan, say)
    except (OSError, AssertionError, RuntimeError, subprocess.SubprocessError) as exc:
        for name in wanted:  # no PostgreSQL 15, or the topology did not come up
            missing[name] = f"the product topology did not start: {exc}"
        print(f"{tag} product paths: skipped: {exc}", flush=True)
        return
    for name, m in got.items():
        results[name].append(m)
        print(f"{tag} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()), flush=True)
    print(f"{tag} product paths done in {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = Plan(args.mbytes << 20, args.pings, args.conns, args.idle)
    runs = args.runs
    if args.quick:
        plan, runs = QUICK, 1
    names = args.paths.split(",")
    print(f"machine: {machine()}", flush=True)
    print(f"command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    pki = tlspki.make()
    be = paths.start_backends(str(pki.dir))
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    missing: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        for run_no in range(1, runs + 1):
            for name in names:
                if name in missing or name in product.PATHS:
                    continue
                t0 = time.perf_counter()
                tag = f"[{time.perf_counter() - t_start:6.0f} s] run {run_no}/{runs} {name}"
                try:
                    running = paths.start(name, be)
                except (FileNotFoundError, RuntimeError) as exc:
                    missing[name] = str(exc)
                    print(f"{tag}: skipped: {exc}", flush=True)
                    continue
                def say(what: str, tag: str = tag) -> None:
                    print(f"{tag}: {what} ...", flush=True)

                try:
                    m = measure(running, plan, pki, say)
                finally:
                    running.stop()
                results[name].append(m)
                print(f"{tag}: done in {time.perf_counter() - t0:.0f} s: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in m.items()), flush=True)
            _product_run(names, plan, results, missing,
                         f"[{time.perf_counter() - t_start:6.0f} s] run {run_no}/{runs}")
    finally:
        be.proc.terminate()
        be.proc.wait(10)
        shutil.rmtree(pki.dir, ignore_errors=True)
    rows = [Row(n, {k: statistics.median(r[k] for r in results[n]) for k in results[n][0]})
            for n in names if results[n]]
    print()
    print(render(rows, runs))
    for name, why in missing.items():
        print(f"missing peer: {name}: {why}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine(), "runs": results},
                                                 indent=1))
    written = plots.write(rows, out, results)
    print(written if isinstance(written, str)
          else f"plots: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        sys.exit(f"bench failed: {exc}")
