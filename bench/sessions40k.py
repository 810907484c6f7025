"""Many concurrent TLS sessions through tunnel mode, held (issue 15 point 5).

    python -m bench.sessions40k [--sessions 40000] [--hold 600] [--period 60]
                                [--per-proxy 7000] [--per-client 5000] [--out FILE]

The topology spreads the sessions over several processes at every hop, because one
process may hold 20,000 open files here and every relayed session costs a proxy two:

    client processes (bench/sessionclient.py, each from its own 127.0.0.x)
      → local proxies in tunnel mode (`mwibot proxy … db --tunnel --no-ping`)
      → cluster processes (`mwiproxy start`, one port each, one PostgreSQL storage)
      → PgBouncer instances sharing one port (so_reuseport; certificate auth against the
        cluster's Database CA, transaction pooling, 4 server connections each)
      → PostgreSQL

Each cluster process dials PgBouncer on its own loopback address (127.0.0.10+i), so the
40,000 connections to PgBouncer do not share one (source, destination) ephemeral range.
Every session completes the PostgreSQL startup and runs `SELECT 1`, then one `SELECT 1`
every --period seconds while held. RSS and open fds of every proxy process are sampled
every 10 s over the hold; memory per session = (RSS held − RSS idle) / sessions, per
process type (every session passes one local proxy and one cluster process).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mwiproxy.devkit import free_port, pgbouncer, postgres
from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.processes import terminate
from mwiproxy.devkit.topology import CLUSTER_YAML, LocalProxyProcess, Topology

from .idle import rss_kib
from .paths import ROOT

SAMPLE_EVERY = 10.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Rig:
    clusters: list[ClusterProcess]
    proxies: list[LocalProxyProcess]
    bouncers: pgbouncer.PgBouncers

    def kinds(self) -> dict[str, list[int]]:
        return {"cluster process": [c.proc.pid for c in self.clusters if c.proc],
                "local proxy (tunnel)": [p.proc.pid for p in self.proxies],
                "pgbouncer": self.bouncers.pids}


def _template(storage: str, bouncer_addr: str) -> str:
    return (CLUSTER_YAML.replace("127.0.0.1:PGPORT", bouncer_addr)
            .replace("{env: dev}", "{{env: dev}}")
            + f"storage:\n  type: postgres\n  conn_string: '{storage}'\n")


@contextmanager
def rig(root: Path, sessions: int, per_proxy: int, bouncers: int) -> Iterator[Rig]:
    n = max(1, math.ceil(sessions / per_proxy))
    with ExitStack() as stack:
        store = postgres.PostgresServer().start()
        stack.callback(store.stop)
        store.psql("CREATE DATABASE mwi_store")
        storage = f"host=127.0.0.1 port={store.port} user=postgres dbname=mwi_store"
        bport = free_port()
        addrs = [f"127.0.0.{10 + i}" for i in range(n)]
        clusters: list[ClusterProcess] = []
        for i in range(n):
            data = root / f"data-{i}"
            if i:  # the documented set-up: a copy of the first one's CA directory
                data.mkdir(mode=0o700)
                shutil.copytree(root / "data-0" / "ca", data / "ca")
            c = ClusterProcess(data, config=_template(storage, f"{addrs[i]}:{bport}"))
            c.start()
            stack.callback(c.stop)
            clusters.append(c)
        first = clusters[0]
        (root / "role.yaml").write_text(GUIDE_ROLE)
        first.ctl("create", "-f", str(root / "role.yaml"))
        pg = postgres.PostgresServer(hba=["local all all trust"])
        pg.start()
        stack.callback(pg.stop)
        with open(pg.data / "postgresql.conf", "a") as f:
            f.write("max_connections = 200\n")
        pg.psql("CREATE USER alice")
        pg.psql('CREATE DATABASE "example-db" OWNER alice')
        out = root / "bouncer-server"
        first.ctl("auth", "sign", "--format=db", f"--host=localhost,{','.join(addrs)}",
                  f"--out={out}", "--ttl=24h")
        per_bouncer = min(18_000, math.ceil(sessions / bouncers * 1.5) + 100)
        pb = pgbouncer.PgBouncers(root / "bouncers", pg, "example-db", bport, addrs,
                                  (f"{out}.crt", f"{out}.key", f"{out}.cas"),
                                  instances=bouncers, max_client_conn=per_bouncer)
        (root / "bouncers").mkdir(mode=0o755)
        pb.start()
        stack.callback(pb.stop)
        topo = Topology(root, first, pg)
        bot_out = topo.bot_output("load", ttl="2h")
        proxies = []
        for c in clusters:
            t = Topology(root, c, pg)
            lp = t.local_proxy(bot_out, tunnel=True, extra=("--no-ping",))
            stack.callback(lp.stop)
            proxies.append(lp)
        yield Rig(clusters, proxies, pb)


def _traversable(root: Path) -> Path:
    """PgBouncer runs as `postgres`: it must pass through (not list) the bench's root."""
    os.chmod(root, 0o711)
    return root


@dataclass
class Stats:
    idle: dict[str, int] = field(default_factory=dict)  # total RSS KiB per kind
    count: dict[str, int] = field(default_factory=dict)  # processes per kind
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)

    def take(self, r: Rig, t0: float) -> dict[str, tuple[int, int]]:
        got = {k: (sum(rss_kib(p) for p in pids), sum(fds(p) for p in pids))
               for k, pids in r.kinds().items()}
        self.samples.append((time.monotonic() - t0, got))
        return got


@dataclass
class Outcome:
    held: int = 0
    errors: int = 0
    lost: int = 0
    queries: int = 0
    ramp_s: float = 0.0
    first_error: str = ""


def flatness(s: Stats) -> dict[str, tuple[int, int, int, int]]:
    """Per process type over the hold: (RSS first, RSS last, fds first, fds last)."""
    out = {}
    for kind in s.idle:
        first, last = s.samples[0][1][kind], s.samples[-1][1][kind]
        out[kind] = (first[0], last[0], first[1], last[1])
    return out


def run(sessions: int, hold: float, period: float, per_proxy: int, per_client: int,
        bouncers: int) -> tuple[Outcome, Stats]:
    stats, outcome = Stats(), Outcome()
    with tempfile.TemporaryDirectory(prefix="mwi-40k-") as tmp, \
            rig(_traversable(Path(tmp)), sessions, per_proxy, bouncers) as r:
        time.sleep(2)
        stats.idle = {k: v[0] for k, v in Stats().take(r, 0).items()}
        stats.count = {k: len(v) for k, v in r.kinds().items()}
        procs: list[subprocess.Popen[str]] = []
        startup_errors: list[int] = []
        n_lp = len(r.proxies)
        per = [sessions // n_lp + (i < sessions % n_lp) for i in range(n_lp)]
        k = 0
        start = time.monotonic()
        try:
            for i, lp in enumerate(r.proxies):
                left = per[i]
                while left > 0:
                    cnt = min(per_client, left)
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "bench.sessionclient", str(lp.port), str(cnt),
                         f"127.0.1.{k + 2}", "--period", str(period)],
                        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                    left -= cnt
                    k += 1
            for p in procs:
                assert p.stdout is not None
                words = p.stdout.readline().split(maxsplit=4)
                if len(words) >= 4:
                    outcome.held += int(words[1])
                    startup_errors.append(int(words[3]))
                    if int(words[3]) and not outcome.first_error:
                        outcome.first_error = words[4] if len(words) > 4 else "?"
                else:
                    startup_errors.append(1)
            outcome.ramp_s = time.monotonic() - start
            print(f"held {outcome.held} of {sessions} after {outcome.ramp_s:.0f} s, "
                  f"errors {outcome.errors} {outcome.first_error}", flush=True)
            t0 = time.monotonic()
            while True:
                got = stats.take(r, t0)
                print(f"t={time.monotonic() - t0:5.0f}s " + "  ".join(
                    f"{kind}: {v[0] // 1024} MiB {v[1]} fds" for kind, v in got.items()),
                    flush=True)
                if time.monotonic() - t0 >= hold:
                    break
                time.sleep(min(SAMPLE_EVERY, max(0.0, hold - (time.monotonic() - t0))))
        finally:
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()
            for j, p in enumerate(procs):
                assert p.stdout is not None
                words = p.stdout.readline().split(maxsplit=6)
                if len(words) >= 6:  # its errors: at startup and since
                    outcome.queries += int(words[1])
                    outcome.errors += int(words[3])
                    outcome.lost += int(words[5])
                else:
                    outcome.errors += startup_errors[j] if j < len(startup_errors) else 1
                    if int(words[5]) and not outcome.first_error:
                        outcome.first_error = words[6] if len(words) > 6 else "?"
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    terminate(p)
        return outcome, stats


def report(o: Outcome, s: Stats, sessions: int, hold: float, argv: str) -> str:
    lines = [f"Sessions asked {sessions}, held {o.held}, errors {o.errors} (startup + "
             f"queries), sessions lost while held {o.lost}; ramp {o.ramp_s:.0f} s, hold "
             f"{hold:.0f} s, liveness queries {o.queries}.", "",
             "| process type | processes | RSS idle MiB | RSS held first / last / max MiB | "
             "fds first / last / max | KiB per session |", "|---|---:|---:|---:|---:|---:|"]
    for kind, idle in s.idle.items():
        rss = [v[kind][0] for _, v in s.samples]
        fd = [v[kind][1] for _, v in s.samples]
        if not rss:
            continue
        per = (rss[0] - idle) / o.held if o.held else float("nan")
        lines.append(f"| {kind} | {s.count.get(kind, 0)} | {idle / 1024:.0f} | {rss[0] / 1024:.0f} / "
                     f"{rss[-1] / 1024:.0f} / {max(rss) / 1024:.0f} | {fd[0]} / {fd[-1]} / "
                     f"{max(fd)} | {per:.1f} |")
    lines += ["", f"Command: `{argv}`", f"Machine: {machine()}"]
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ver = subprocess.run([pgbouncer.BINARY, "--version"], capture_output=True,
                         text=True).stdout.splitlines()
    return (f"{os.cpu_count()} cores ({cpu}), load average at the end "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {ver[0] if ver else 'pgbouncer'}")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sessions40k", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=40_000)
    ap.add_argument("--hold", type=float, default=600, help="seconds held after the ramp")
    ap.add_argument("--period", type=float, default=60,
                    help="each held session runs SELECT 1 this often (seconds)")
    ap.add_argument("--per-proxy", type=int, default=7000,
                    help="sessions per cluster process and per local proxy (2 fds each)")
    ap.add_argument("--per-client", type=int, default=5000, help="sessions per client process")
    ap.add_argument("--bouncers", type=int, default=4, help="PgBouncer processes (one port)")
    ap.add_argument("--out", default="", help="also append the report (markdown) here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # stop everything started, as on ^C
    if not (postgres.available() and pgbouncer.available()):
        print("PostgreSQL 15 and pgbouncer are needed (scripts/install-deps)", file=sys.stderr)
        return 1
    o, s = run(args.sessions, args.hold, args.period, args.per_proxy, args.per_client,
                  args.bouncers)
    cmd = ("python -m bench.sessions40k " + " ".join(sys.argv[1:] if argv is None else argv))
    text = report(o, s, args.sessions, args.hold, cmd.strip())
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0 if o.errors == 0 and o.lost == 0 and o.held == args.sessions else 1


if __name__ == "__main__":
    sys.exit(main())
