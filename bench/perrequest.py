"""What each proxy process of bench.engines spends per request: syscalls (by name), CPU,
run-queue wait and threads, on the HAProxy topology and the mwiproxy tunnel.

    python -m bench.perrequest [--engines redis,mariadb] [--requests 100000] [--no-ping]
                               [--no-strace]

Same topology, cells and clients as `python -m bench.engines` (one warm-up pass each).
Per cell and path, one run of `--requests` (MariaDB: a fifth of it) gives CPU µs per
request (utime + stime, /proc/PID/stat) and run-queue wait µs per request (the second
field of /proc/PID/task/*/schedstat: time runnable but not running, all threads); then a
run of a fifth of that under `strace -c -f -p PID` on each proxy process gives syscalls
per request. Syscall counts do not depend on how busy the box is; CPU and waits do (and
strace slows what it traces: its run gives no CPU figure). Needs strace (root, or
ptrace allowed).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import engines
from .dbpath import cpu_ticks, cpu_us_per
from .engineload import Cell, Runner, Target, redis_command, slap_command


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def runq_wait_ns(pid: int) -> int:
    """Nanoseconds the process's threads (those alive now) spent runnable, not running."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total


def parse_strace_c(text: str) -> dict[str, int]:
    """syscall -> calls, from `strace -c` output (errors counted in calls)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if (len(parts) >= 5 and re.fullmatch(r"[0-9.]+", parts[0]) and parts[-1] != "total"
                and parts[3].isdigit()):
            calls[parts[-1]] = int(parts[3])
    return calls


def command(engine: str, target: Target, cell: Cell, n: int) -> list[str]:
    if engine == "redis":
        return redis_command(target, cell, n)
    return slap_command(target, cell, n // cell.clients * cell.clients, engines.SCHEMA)


def syscalls(pids: list[int], cmd: list[str], out: Path) -> list[dict[str, int]]:
    tracers = []
    for pid in pids:
        tracers.append(subprocess.Popen(["strace", "-c", "-f", "-o", str(out / f"{pid}.txt"),
                                         "-p", str(pid)], stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # attached to every thread
    try:
        subprocess.run(cmd, capture_output=True, check=True, timeout=600)
    finally:
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
    return [parse_strace_c((out / f"{pid}.txt").read_text()) for pid in pids]


def measure(engine: str, target: Target, cell: Cell, n: int, strace: bool,
            out: Path) -> None:
    ticks = [cpu_ticks([p]) for p in target.pids]
    waits = [runq_wait_ns(p) for p in target.pids]
    subprocess.run(command(engine, target, cell, n), capture_output=True, check=True,
                   timeout=600)
    cpu = [cpu_us_per(cpu_ticks([p]) - t, n) for p, t in zip(target.pids, ticks, strict=True)]
    wait = [(runq_wait_ns(p) - w) / n / 1e3 for p, w in zip(target.pids, waits, strict=True)]
    print(f"{engine} {cell.name:26} {target.name:17} load {os.getloadavg()[0]:4.1f} "
          f"threads {[threads(p) for p in target.pids]} CPU µs/req "
          f"{' + '.join(f'{c:.1f}' for c in cpu)} run-queue wait µs/req "
          f"{' + '.join(f'{w:.1f}' for w in wait)}", flush=True)
    if not strace:
        return
    m = max(1, n // 5)
    for name, calls in zip(target.processes,
                           syscalls(target.pids, command(engine, target, cell, m), out),
                           strict=True):
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
        print(f"    {name:21} syscalls/req {sum(calls.values()) / m:5.2f}: "
              + " ".join(f"{k} {v / m:.2f}" for k, v in top), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perrequest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(engines.ENGINES))
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--no-ping", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    args = ap.parse_args(argv)
    names = tuple(e for e in args.engines.split(",") if e)
    with tempfile.TemporaryDirectory(prefix="mwi-perrequest-") as tmp, \
            engines.topology(Path(tmp), names, not args.no_ping) as bench:
        runner = Runner(1)
        for engine, cells in bench.cells.items():
            runner.warm_up(bench.targets[engine], cells)
            for cell in cells:
                for target in bench.targets[engine]:
                    if target.pids:
                        n = args.requests if engine == "redis" else args.requests // 5
                        measure(engine, target, cell, n, not args.no_strace, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
