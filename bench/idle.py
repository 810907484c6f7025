"""The concurrency figure: hold N idle connections through a path, spread over several
client processes, and read the proxy's resident memory before and after."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import ROOT, Running

PER_PROCESS = 2500  # well under the 20,000 fds each process may have


@dataclass
class Held:
    held: int
    errors: int
    kib_per_conn: float  # proxy RSS growth per held connection (nan without a proxy)


def rss_kib(pid: int) -> int:
    """Resident memory of a whole process (all threads share it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hold(run: Running, count: int, ca: str | None) -> Held:
    before = rss_kib(run.proc.pid) if run.proc else 0
    procs = []
    left, k = count, 0
    while left > 0:
        n = min(PER_PROCESS, left)
        argv = [sys.executable, "-m", "bench.idleclient", str(run.echo), str(n),
                f"127.0.0.{k + 2}"] + (["--ca", ca] if ca else [])
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
        left -= n
        k += 1
    held = errors = 0
    try:
        for p in procs:
            assert p.stdout is not None
            words = p.stdout.readline().split()
            if len(words) >= 4:
                held += int(words[1])
                errors += int(words[3])
            else:
                errors += 1
        time.sleep(0.5)  # let the proxy settle (buffers released after the last byte)
        after = rss_kib(run.proc.pid) if run.proc else 0
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(60)
        time.sleep(1.0)  # let every side finish closing before the next figure
    per = (after - before) / held if run.proc and held else float("nan")
    return Held(held, errors, per)
