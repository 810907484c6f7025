"""pgbench through the whole data path, against direct TLS and an HAProxy topology.

    python -m bench.pgbench_topology [--seconds 8] [--runs 3] [--out bench/RESULTS-pgbench.md]
                                     [--metrics off|on|both]

One run starts a real PostgreSQL (cert auth, TLS), an mwiproxy cluster, bot
credentials and two local proxies (tunnel, non-tunnel; two more with `--ping`, one of
each mode, unless --no-ping), a database agent (`mwiproxy start --roles=db`) serving the same PostgreSQL
under a second name with its own tunnel-mode local proxy (unless --no-agent: the cost of
the extra hop), and two HAProxies: one on the "service host" originating TLS with the client
certificate, one at the "cluster side" terminating it (verifying the client certificate)
and forwarding to PostgreSQL. PostgreSQL 15 cannot take TLS without its SSLRequest
exchange, which HAProxy does not speak, so on that last leg the TLS is pgbench's own
(sslmode=require inside the outer TLS): the same count of TLS legs as mwiproxy's tunnel.

Cells (interleaved across topologies, each repeated --runs times, medians reported):
select-only and TPC-B with 1 client (latency per transaction p50/p99, from `pgbench -l`)
and 16 clients (TPS); connect + first query (psycopg, 1 client, p50/p99). CPU per
transaction of each proxy process comes from /proc/PID/stat (utime + stime).

--metrics on: every mwiproxy process serves /metrics (bench/scrape.py), scraped once a
second while measured; --metrics both: what that costs (bench/pgmetrics.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mwiproxy.devkit import postgres
from mwiproxy.devkit.agent import AGENT_SERVICE, Agent, db_token
from mwiproxy.devkit.topology import CLUSTER_YAML, Topology, start_topology

from . import dbpath
from .dbpath import (
    cpu_ticks,
    cpu_us_per,
    db_client_cert,
    first_line,
    percentile,
    start_haproxies,
    stop_all,
)
from .scrape import Diag

PGBENCH = str(postgres.PG_BIN / "pgbench")
SCALE = 16


CONNECT = "connect + first query (psycopg)"


@dataclass(frozen=True)
class Cell:
    name: str
    args: tuple[str, ...]
    clients: int
    latency: bool  # report p50/p99 per transaction (else TPS)


CELLS = [
    Cell("select-only, 1 client", ("-S",), 1, True),
    Cell("select-only, 16 clients", ("-S",), 16, False),
    Cell("TPC-B, 1 client", (), 1, True),
    Cell("TPC-B, 16 clients", (), 16, False),
    Cell(CONNECT, (), 1, True),
]


@dataclass
class Target:
    name: str
    dsn: str
    pids: list[int] = field(default_factory=list)  # the proxy processes on this path


@dataclass
class Sample:
    tps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_tx: float


# -- the topologies -----------------------------------------------------------------


def _alice_cert(topo: Topology) -> tuple[str, str]:
    """A certificate PostgreSQL accepts for user alice (db_client CA), for the direct
    and HAProxy paths where pgbench speaks TLS to PostgreSQL itself."""
    return db_client_cert(topo.cluster.data_dir, topo.root, "alice")


def _haproxy(root: Path, pg_port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    """The two HAProxies; the last leg is plain TCP, pgbench's own TLS rides through."""
    return start_haproxies(root, f"127.0.0.1:{pg_port}", "pg")


@contextmanager
def topology(root: Path, with_ping: bool, with_agent: bool = True, diag: Diag | None = None
             ) -> Iterator[list[Target]]:
    """The paths; with `diag`, every mwiproxy process serves /metrics on an address of it."""
    haproxies: list[subprocess.Popen[bytes]] = []
    agent: Agent | None = None
    template = diag.cluster_template(CLUSTER_YAML) if diag else CLUSTER_YAML
    # the dev kit stops the local proxies, the cluster and PostgreSQL after these
    with start_topology(root, template) as topo:
        try:
            pg = topo.pg
            subprocess.run([PGBENCH, "-i", "-q", "-s", str(SCALE), "-h", str(pg.root), "-p",
                            str(pg.port), "-U", "alice", "example-db"], check=True,
                           capture_output=True)
            out = topo.bot_output("bench", ttl="1h")
            crt, key = _alice_cert(topo)
            ha_port, haproxies = _haproxy(root, pg.port)
            assert topo.cluster.proc is not None
            targets = _targets(topo, out, crt, key, ha_port, haproxies, with_ping, diag)
            if with_agent:
                agent = Agent(topo, "bench", diag.agent_extra() if diag else "")
                agent.start(token=db_token(topo))
                targets.append(_agent_target(topo, agent, diag))
            yield targets
        finally:
            if agent is not None:
                agent.stop()
            stop_all(haproxies)


def _diag_flags(diag: Diag | None, process: str) -> tuple[str, ...]:
    return diag.proxy_flags(process) if diag else ()


def _targets(topo: Topology, out: Path, crt: str, key: str, ha_port: int,
             haproxies: list[subprocess.Popen[bytes]], with_ping: bool,
             diag: Diag | None = None) -> list[Target]:
    assert topo.cluster.proc is not None
    cluster_pid = topo.cluster.proc.pid
    tls_to_pg = f"sslmode=require sslcert={crt} sslkey={key}"
    db = "user=alice dbname=example-db"
    # the plain rows: the local proxy offers `-ping` by default, these ask it not to
    tunnel = topo.local_proxy(out, tunnel=True, extra=(
        "--no-ping", *_diag_flags(diag, "local proxy (tunnel)")))
    passthrough = topo.local_proxy(out, tunnel=False, extra=(
        "--no-ping", *_diag_flags(diag, "local proxy (non-tunnel)")))
    targets = [
        Target("direct TLS", f"host=127.0.0.1 port={topo.pg.port} {db} {tls_to_pg}"),
        Target("mwiproxy tunnel", f"host=127.0.0.1 port={tunnel.port} {db} sslmode=disable",
               [tunnel.proc.pid, cluster_pid]),
        Target("mwiproxy non-tunnel", topo.dsn(passthrough, out).replace(
            "connect_timeout=10", ""), [passthrough.proc.pid, cluster_pid]),
        Target("HAProxy topology", f"host=127.0.0.1 port={ha_port} {db} {tls_to_pg}",
               [p.pid for p in haproxies]),
    ]
    if with_ping:
        ping = topo.local_proxy(out, tunnel=True, extra=(
            "--ping", *_diag_flags(diag, "local proxy (tunnel -ping)")))
        targets.append(Target("mwiproxy tunnel -ping",
                              f"host=127.0.0.1 port={ping.port} {db} sslmode=disable",
                              [ping.proc.pid, cluster_pid]))
        framed = topo.local_proxy(out, tunnel=False, extra=(
            "--ping", *_diag_flags(diag, "local proxy (non-tunnel -ping)")))
        targets.append(Target("mwiproxy non-tunnel -ping", topo.dsn(framed, out).replace(
            "connect_timeout=10", ""), [framed.proc.pid, cluster_pid]))
    return targets


def _agent_target(topo: Topology, agent: Agent, diag: Diag | None = None) -> Target:
    assert topo.cluster.proc is not None and agent.proc is not None
    out = topo.bot_output("bench-agent", ttl="1h", service=AGENT_SERVICE)
    lp = topo.local_proxy(out, tunnel=True, service=AGENT_SERVICE,
                          extra=_diag_flags(diag, "local proxy (via agent)"))
    # the product's default: `-ping` offered
    return Target("mwiproxy tunnel -ping via agent",
                  f"host=127.0.0.1 port={lp.port} user=alice dbname=example-db "
                  "sslmode=disable", [lp.proc.pid, topo.cluster.proc.pid, agent.proc.pid])


# -- measuring ----------------------------------------------------------------------


def _latencies_ms(logdir: Path) -> list[float]:
    values = []
    for log in logdir.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                values.append(int(parts[2]) / 1000)
    return sorted(values)


def run_connect_cell(target: Target, seconds: int) -> Sample:
    """Connect, run `select 1`, disconnect, in a loop: pgbench -C leaves the connection
    time out of its per-transaction latency, so this is timed here."""
    import psycopg

    times: list[float] = []
    before = cpu_ticks(target.pids)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        with psycopg.connect(target.dsn) as conn:
            conn.execute("select 1").fetchone()
        times.append((time.monotonic() - start) * 1000)
    cpu = cpu_ticks(target.pids) - before
    times.sort()
    return Sample(tps=len(times) / seconds, p50_ms=percentile(times, 0.5),
                  p99_ms=percentile(times, 0.99),
                  cpu_us_per_tx=cpu_us_per(cpu, len(times)) if target.pids else 0.0)


def run_cell(target: Target, cell: Cell, seconds: int) -> Sample:
    if cell.name == CONNECT:
        return run_connect_cell(target, seconds)
    with tempfile.TemporaryDirectory(prefix="pgbench-") as logdir:
        cmd = [PGBENCH, "-n", "-T", str(seconds), "-c", str(cell.clients), "-j",
               str(min(cell.clients, 2)), *cell.args, "-l", "--log-prefix",
               f"{logdir}/pgbench_log", target.dsn]
        before = cpu_ticks(target.pids)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        cpu = cpu_ticks(target.pids) - before
        if res.returncode != 0:
            raise RuntimeError(f"pgbench failed on {target.name}: {res.stderr[-2000:]}")
        lat = _latencies_ms(Path(logdir))
    tx = len(lat)
    return Sample(tps=tx / seconds, p50_ms=percentile(lat, 0.5), p99_ms=percentile(lat, 0.99),
                  cpu_us_per_tx=cpu_us_per(cpu, tx) if target.pids else 0.0)


def measure(targets: list[Target], seconds: int, runs: int
            ) -> dict[tuple[str, str], list[Sample]]:
    results: dict[tuple[str, str], list[Sample]] = {}
    for run in range(runs):
        for cell in CELLS:
            for target in targets:
                sample = run_cell(target, cell, seconds)
                results.setdefault((target.name, cell.name), []).append(sample)
                print(f"run {run + 1}/{runs} {cell.name:32} {target.name:22} "
                      f"tps={sample.tps:8.1f} p50={sample.p50_ms:6.3f}ms "
                      f"p99={sample.p99_ms:6.3f}ms cpu/tx={sample.cpu_us_per_tx:6.1f}us",
                      flush=True)
    return results


# -- the report ---------------------------------------------------------------------


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def table(results: dict[tuple[str, str], list[Sample]], names: list[str]) -> str:
    lines = ["| cell | path | TPS | p50 ms | p99 ms | × direct | × HAProxy | "
             "added p50 ms vs direct | proxy CPU µs/tx |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in CELLS:
        direct = results[("direct TLS", cell.name)]
        haproxy = results[("HAProxy topology", cell.name)]
        for name in names:
            s = results[(name, cell.name)]
            metric = "p50_ms" if cell.latency else "tps"
            ratio_d = _median(s, metric) / _median(direct, metric)
            ratio_h = _median(s, metric) / _median(haproxy, metric)
            added = _median(s, "p50_ms") - _median(direct, "p50_ms")
            lines.append(
                f"| {cell.name} | {name} | {_median(s, 'tps'):.0f} | {_median(s, 'p50_ms'):.3f}"
                f" | {_median(s, 'p99_ms'):.3f} | {ratio_d:.2f} | {ratio_h:.2f} | {added:+.3f}"
                f" | {_median(s, 'cpu_us_per_tx'):.0f} |")
    return "\n".join(lines)


def machine() -> str:
    return dbpath.machine(first_line(PGBENCH, "--version"), first_line("haproxy", "-v"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pgbench_topology", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8, help="duration of each cell")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    ap.add_argument("--no-ping", action="store_true", help="skip the `--ping` local proxy")
    ap.add_argument("--no-agent", action="store_true", help="skip the database agent path")
    ap.add_argument("--metrics", choices=("off", "on", "both"), default="off",
                    help="on: every mwiproxy process serves /metrics, scraped once a second "
                    "while measured; both: the tunnel paths with metrics on and off, side by "
                    "side, 16 clients (bench/pgmetrics.py)")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    ap.add_argument("--plots", default="bench/out/pgbench",
                    help="PNG plots (spread over runs) and results.json here")
    args = ap.parse_args(argv)
    if not postgres.available():
        print("PostgreSQL 15 is not installed", file=sys.stderr)
        return 1
    if args.metrics == "both":
        from . import pgmetrics

        return pgmetrics.run(args)
    diag = Diag() if args.metrics == "on" else None
    with tempfile.TemporaryDirectory(prefix="mwi-pgbench-") as tmp, \
            topology(Path(tmp), not args.no_ping, not args.no_agent, diag) as targets, \
            diag.scraping() if diag else contextlib.nullcontext():
        results = measure(targets, args.seconds, args.runs)
    flags = (" --no-ping" * args.no_ping + " --no-agent" * args.no_agent
             + " --metrics on" * (diag is not None))
    scraped = f"Scraped (metrics on):\n{diag.report()}\n\n" if diag else ""
    report = (f"{table(results, [t.name for t in targets])}\n\n{scraped}{machine()}\n\n"
              f"Command: `python -m bench.pgbench_topology --seconds {args.seconds} "
              f"--runs {args.runs}{flags}`\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    from . import pgplots  # here, not at the top: the import block is being reworked

    names = [t.name for t in targets]
    plots_dir = Path(args.plots)
    plots_dir.mkdir(parents=True, exist_ok=True)
    pgplots.write_json(results, CELLS, names, plots_dir,
                       {"machine": machine(), "command": f"python -m bench.pgbench_topology "
                        f"--seconds {args.seconds} --runs {args.runs}{flags}",
                        "metrics": args.metrics,
                        **({"scraped": diag.summary()} if diag else {})})
    written = pgplots.write_plots(results, CELLS, names, plots_dir)
    print(written if isinstance(written, str)
          else f"plots: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
